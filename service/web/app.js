// Operator page of the fall-detection service: cameras with live boxes, fall alerts, timelines.
// Plain browser ES modules, no build step, no third-party code; this is the entry point
// (index.html loads it as <script type="module">) and starts the page: the sign-in and settings
// dialogs, adding a camera, the polls and the alert feed. The other parts, one job each:
//   common.js    storage keys, the page state, DOM and text helpers
//   api.js       fetch and WebSockets with the key, reconnecting sockets, the sign-in dialog
//   cameras.js   camera tiles: the live picture with boxes and labels, the camera list
//   timeline.js  the selected camera's timeline
//   alerts.js    alert cards: acknowledge (one or many), clip player, reviews
//   alarm.js     banner, blinking border and beep of a new fall
//   zones.js     bed and ignore zones: drawn on the picture, and their editor
// The page talks only to its own origin:
//   GET  v1/streams, POST v1/streams, DELETE v1/streams/{id}      camera list and state (polled)
//   WS   v1/streams/{id}/ws  (key as subprotocol falldet.key.*)    frame results (boxes) + events
//   GET  v1/streams/{id}/preview.jpg                              latest processed picture (pulled)
//   GET  v1/streams/{id}/timeline                                 action segments per person
//   WS   v1/events           (key as subprotocol falldet.key.*)    events of all cameras
//   GET  v1/alerts, POST v1/alerts/{id}/ack, GET v1/alerts/{id}/snapshot.jpg
// Every URL is relative to the page, so the page also works behind a path prefix.

import { STORE, $, state, showError } from "./common.js";
import { AuthError, wsUrl, api, ReconnectingSocket, checkAuthSoon, openKeyDialog } from "./api.js";
import { refreshCameras, selectCamera } from "./cameras.js";
import { renderTimeline, refreshTimeline } from "./timeline.js";
import { onEvent, groupHead, refreshPendingClips, acknowledgeSelected, acknowledgeCamera, refreshAlerts } from "./alerts.js";
import { unlockAudio, hideBanner } from "./alarm.js";
import { zoneEditor, renderZoneEditor, zoneCanvasClick, closeZoneShape, saveZones } from "./zones.js";

const CAMERA_POLL_MS = 2000;
const ALERTS_POLL_MS = 15000;
const TIMELINE_POLL_MS = 3000;

async function submitKey(ev) {
  ev.preventDefault();
  unlockAudio();
  const key = $("#key-input").value.trim() || state.key;
  const operator = $("#operator-input").value.trim();
  if (!key) { showError($("#key-error"), "Enter the API key."); return; }
  const previous = state.key;
  state.key = key;
  try {
    await api("v1/streams");
  } catch (err) {
    state.key = previous;
    showError($("#key-error"), err instanceof AuthError ? "This key was refused by the service." : `Cannot reach the service: ${err.message}`);
    return;
  }
  localStorage.setItem(STORE.key, key);
  state.operator = operator;
  localStorage.setItem(STORE.operator, operator);
  $("#key-dialog").close();
  if (key !== previous) {
    for (const tile of state.cameras.values()) tile.socket.restart();
    if (eventsSocket) eventsSocket.restart();
  }
  startAll();
}

function signOut() {
  localStorage.removeItem(STORE.key);
  state.key = "";
  for (const tile of state.cameras.values()) tile.destroy();
  state.cameras.clear();
  if (eventsSocket) eventsSocket.stop();
  openKeyDialog("");
}

async function submitCamera(ev) {
  ev.preventDefault();
  const id = $("#camera-id").value.trim();
  const url = $("#camera-url").value.trim();
  try {
    await api("v1/streams", { method: "POST", body: { id, url } });
  } catch (err) {
    showError($("#camera-error"), err instanceof AuthError ? err.message : `Not added: ${err.message}`);
    return;
  }
  $("#camera-dialog").close();
  $("#camera-form").reset();
  await refreshCameras();
  selectCamera(id);
}

let eventsSocket = null;

function setConn(s) {
  const el = $("#conn");
  el.dataset.state = s === "open" ? "online" : "offline";
  el.textContent = s === "open" ? "alerts: live" : `alerts: ${s}`;
  if (s === "open") refreshAlerts(); // catch what was missed while away
}

function startAll() {
  if (state.started) return;
  state.started = true;
  eventsSocket = new ReconnectingSocket(() => wsUrl("v1/events"), {
    onMessage: (msg) => onEvent(msg, true),
    onState: setConn,
    onTrouble: checkAuthSoon,
  });
  eventsSocket.start();
  refreshCameras();
  refreshAlerts();
  setInterval(() => { if (state.key) refreshCameras(); }, CAMERA_POLL_MS);
  setInterval(() => { if (state.key) refreshAlerts(); }, ALERTS_POLL_MS);
  setInterval(() => { if (state.key) refreshPendingClips(); }, 5000);
  setInterval(() => { if (state.key && !document.hidden) refreshTimeline(); }, TIMELINE_POLL_MS);
}

function init() {
  $("#key-form").addEventListener("submit", submitKey);
  $("#key-dialog").addEventListener("cancel", (ev) => { if (!state.key) ev.preventDefault(); });
  $("#sign-out-btn").addEventListener("click", signOut);
  $("#zones-canvas").addEventListener("click", zoneCanvasClick);
  $("#zone-close").addEventListener("click", closeZoneShape);
  $("#zone-undo").addEventListener("click", () => { zoneEditor.points.pop(); renderZoneEditor(); });
  $("#zones-form").addEventListener("submit", saveZones);
  $("#zones-cancel").addEventListener("click", () => $("#zones-dialog").close());
  $("#clip-dialog").addEventListener("close", () => { const v = $("#clip-video"); v.pause(); v.removeAttribute("src"); v.load(); });
  $("#settings-btn").addEventListener("click", () => openKeyDialog(""));
  $("#add-camera-btn").addEventListener("click", () => { showError($("#camera-error"), ""); $("#camera-dialog").showModal(); });
  $("#camera-cancel").addEventListener("click", () => $("#camera-dialog").close());
  $("#camera-form").addEventListener("submit", submitCamera);
  $("#sound-on").checked = state.sound;
  $("#sound-on").addEventListener("change", (ev) => {
    state.sound = ev.target.checked;
    localStorage.setItem(STORE.sound, state.sound ? "on" : "off");
    if (state.sound) unlockAudio();
  });
  $("#ack-selected").addEventListener("click", acknowledgeSelected);
  $("#ack-camera").addEventListener("click", acknowledgeCamera);
  $("#only-open").addEventListener("change", (ev) => $("#alerts").classList.toggle("only-open", ev.target.checked));
  $("#timeline-window").addEventListener("change", () => { if (state.lastTimeline) renderTimeline(state.lastTimeline); });
  $("#fall-banner-close").addEventListener("click", hideBanner);
  $("#fall-banner-show").addEventListener("click", () => {
    const g = state.groups.get($("#fall-banner").dataset.group);
    if (!g) return;
    const ev = groupHead(g);
    if (state.cameras.has(ev.source)) selectCamera(ev.source);
    g.card.scrollIntoView({ behavior: "smooth", block: "center" });
  });
  document.addEventListener("pointerdown", unlockAudio);
  document.addEventListener("keydown", unlockAudio);
  window.addEventListener("resize", () => { if (state.lastTimeline) renderTimeline(state.lastTimeline); });
  if (state.key) {
    startAll();
  } else {
    openKeyDialog("");
  }
}

init();
