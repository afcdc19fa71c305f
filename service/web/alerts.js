// Operator page: the alert cards: one card per fall (or camera outage), acknowledging one or
// many, the fall's clip player, and reviews (real fall / false alarm) for site training.

import { EVENT_TYPES, $, $$, enc, state, clock, dateTime, duration, showError } from "./common.js";
import { AuthError, api } from "./api.js";
import { refreshTimeline } from "./timeline.js";
import { cue, hideBanner } from "./alarm.js";

const ALARM_TYPES = new Set(["fall_alert", "still_down", "camera_offline"]); // events that need a person to look
const ALERTS_SHOWN = 200;
const RING_HISTORY_S = 600; // at first load, an open fall younger than this still rings

// One card per fall: its events share `fall_id` (the fall_alert's id); events stored before
// fall_id existed are grouped by camera, track and fall onset.
function groupKey(a) {
  return a.fall_id || `${a.source}\u0000${a.track_id}\u0000${a.started_frame ?? a.frame}`;
}

export function onEvent(a, fresh) {
  if (!a || !a.id || !EVENT_TYPES.has(a.type)) return;
  const known = state.alerts.get(a.id);
  const merged = known ? { ...known, ...a } : a;
  if (known && known.acked && !a.acked) { merged.acked = true; merged.ack = known.ack; } // ack is final
  state.alerts.set(a.id, merged);
  const key = groupKey(merged);
  let group = state.groups.get(key);
  if (!group) {
    group = { key, events: [] };
    state.groups.set(key, group);
  }
  const i = group.events.findIndex((e) => e.id === a.id);
  if (i >= 0) group.events[i] = merged; else group.events.push(merged);
  renderGroup(group);
  if (fresh && !known && ALARM_TYPES.has(a.type) && !merged.acked) cue(group, merged);
  if (fresh && !known && merged.source === state.selected) refreshTimeline();
  updateAlertCounts();
}

export function groupHead(group) {
  return group.events.find((e) => e.type === "fall_alert") ||
    group.events.reduce((a, b) => ((a.at ?? 0) <= (b.at ?? 0) ? a : b));
}

function groupLatest(group) {
  return group.events.reduce((m, e) => Math.max(m, e.at ?? 0), 0);
}

const ackable = (e) => e.type !== "fall_cleared" && e.type !== "camera_online";
const isCameraEvent = (e) => e.type === "camera_offline" || e.type === "camera_online";

// How a fall ended, in words a carer can act on. Only `recovered` means the person got up: a lost
// track (they left the view, or the tracker lost them on the floor) or an ended camera says
// nothing about them, so it must not read as "up again" and asks someone to check.
const FALL_ENDINGS = {
  recovered: { type: "fall_cleared", title: "Fall (up again)", life: (d) => `up again after ${d}` },
  track_lost: { type: "fall_unresolved", title: "FALL · OUT OF VIEW", life: (d) => `lost from view after ${d} down: not seen getting up, check on them` },
  source_ended: { type: "fall_unresolved", title: "FALL · CAMERA STOPPED", life: (d) => `the camera stopped after ${d} down: not seen getting up, check on them` },
  unknown: { type: "fall_unresolved", title: "FALL · ENDED", life: (d) => `no longer tracked after ${d} down: check on them` },
};

const recovered = (e) => e.type === "fall_cleared" && e.reason === "recovered";
const groupAcked = (g) => g.events.filter(ackable).every((e) => e.acked);

function renderGroup(group) {
  if (!group.card) {
    group.card = $("#alert-template").content.firstElementChild.cloneNode(true);
    $(".ack-btn", group.card).addEventListener("click", () => acknowledge(group));
    $(".card-review .review-fall", group.card).addEventListener("click", () => review(group, "fall"));
    $(".card-review .review-false", group.card).addEventListener("click", () => review(group, "false_alarm"));
    $(".select-box", group.card).addEventListener("change", updateBulkAck);
    $(".snapshot-btn", group.card).addEventListener("click", () => {
      const src = $(".snapshot", group.card).src;
      if (src) { $("#snapshot-large").src = src; $("#snapshot-dialog").showModal(); }
    });
  }
  const card = group.card;
  const head = groupHead(group);
  const events = [...group.events].sort((a, b) => (a.at ?? 0) - (b.at ?? 0));
  const cleared = events.find((e) => e.type === "fall_cleared");
  const stillDown = events.filter((e) => e.type === "still_down");
  const acked = groupAcked(group);
  const ending = cleared ? FALL_ENDINGS[cleared.reason] || FALL_ENDINGS.unknown : null;
  card.dataset.alertId = head.id;
  card.dataset.type = cleared ? ending.type : stillDown.length ? "still_down" : head.type;
  card.classList.toggle("acked", acked);
  $(".alert-type", card).textContent = cleared ? ending.title : stillDown.length ? "STILL DOWN" : head.type === "fall_alert" ? "FALL" : head.type;
  $(".alert-camera", card).textContent = head.source;
  $(".alert-track", card).textContent = head.track_id !== undefined && head.track_id !== null ? `person #${head.track_id}` : "";
  $(".alert-time", card).textContent = dateTime(head.at) + (head.frame !== undefined ? ` · frame ${head.frame}` : "");
  let life = "";
  if (cleared) {
    life = ending.life(duration(cleared.time_down_s));
  } else if (stillDown.length) {
    life = `still down after ${duration(stillDown[stillDown.length - 1].time_down_s)}`;
  } else if (typeof head.time_down_s === "number") {
    life = `down for ${duration(head.time_down_s)} when confirmed`;
  }
  $(".snapshot-btn", card).hidden = isCameraEvent(head); // an outage has no picture
  if (isCameraEvent(head)) {
    const online = events.find((e) => e.type === "camera_online");
    card.dataset.type = online ? "camera_online" : "camera_offline";
    $(".alert-type", card).textContent = online ? "Camera back online" : "CAMERA OFFLINE";
    $(".alert-track", card).textContent = "";
    life = online ? `back online after ${duration(online.down_s)} without picture`
      : `no picture for ${duration(head.down_s)}: nobody is watched here${head.reason ? ` (${head.reason})` : ""}`;
  }
  $(".alert-lifecycle", card).textContent = life;
  $(".clip-info", card).textContent = clipInfo(head);
  const ackBtn = $(".ack-btn", card);
  ackBtn.hidden = acked;
  const box = $(".select-box", card);
  box.hidden = acked;
  if (acked) box.checked = false;
  const ackedEvent = events.find((e) => e.acked && e.ack);
  $(".ack-info", card).textContent = acked
    ? (ackedEvent ? `acknowledged by ${ackedEvent.ack.by || "?"} at ${clock(ackedEvent.ack.at)}${ackedEvent.ack.comment ? `: ${ackedEvent.ack.comment}` : ""}` : "acknowledged")
    : "";
  showReview($(".card-review", card), head, events);
  const withClip = events.find((e) => e.clip_url); // the MP4 of the fall, once written
  const clipBtn = $(".clip-btn", card);
  clipBtn.hidden = !withClip;
  clipBtn.onclick = withClip ? () => playClip(withClip) : null;
  // snapshot_url null: none taken, or pruned by retention (has_snapshot tells what was taken)
  loadSnapshot(group, events.find((e) => e.snapshot_url || (e.snapshot_url === undefined && e.has_snapshot)) || null);
  placeCard(group);
}

// What the card says about its clip (clip_status of its fall_alert): coming, or why there is none.
function clipInfo(head) {
  switch (head.clip_status) {
    case "pending": return "clip: being recorded";
    case "failed": return `no clip: ${head.clip_error || "it could not be made"}`;
    case "none": return `no clip: ${head.clip_error || "not made here"}`;
    case "pruned": return "clip deleted by retention";
    default: return "";
  }
}

// A clip's outcome comes tens of seconds after its alert: cards still waiting ask again.
export async function refreshPendingClips() {
  for (const group of [...state.groups.values()]) {
    const head = groupHead(group);
    if (head.clip_status !== "pending") continue;
    try {
      onEvent(await api(`v1/alerts/${enc(head.id)}`), false);
    } catch (err) { /* next round */ }
  }
}

// The clip is fetched with the key header (never a key in a URL) into a Blob the video element
// plays and seeks locally; the server also answers Range requests for other clients.
async function playClip(ev) {
  const video = $("#clip-video");
  const group = state.groups.get(groupKey(ev));
  const row = $("#clip-dialog .clip-review");
  row.hidden = !group || isCameraEvent(ev);
  $(".review-fall", row).onclick = group ? () => review(group, "fall") : null;
  $(".review-false", row).onclick = group ? () => review(group, "false_alarm") : null;
  if (group) showReview(row, groupHead(group), group.events);
  $("#clip-title").textContent = `${ev.source} · ${dateTime(ev.at)}`;
  showError($("#clip-error"), "");
  $("#clip-dialog").showModal();
  try {
    const res = await api(ev.clip_url.replace(/^\//, ""), { raw: true });
    if (!res.ok) throw new Error(res.status === 404 ? "the clip is no longer available" : `HTTP ${res.status}`);
    if (video.dataset.url) URL.revokeObjectURL(video.dataset.url);
    video.dataset.url = URL.createObjectURL(await res.blob());
    video.src = video.dataset.url;
    video.play().catch(() => {});
  } catch (err) {
    if (!(err instanceof AuthError)) showError($("#clip-error"), `Clip unavailable: ${err.message}`);
  }
}

// A review covers the whole fall (its fall_id); the latest verdict wins, so it may be changed.
const VERDICT_WORDS = { fall: "reviewed: a real fall", false_alarm: "reviewed: false alarm", unsure: "reviewed: unsure" };

function showReview(row, head, events) {
  const reviewed = events.find((e) => e.review) || null;
  const r = reviewed && reviewed.review;
  row.hidden = isCameraEvent(head);
  row.dataset.verdict = r ? r.verdict : "";
  $(".review-info", row).textContent = r ? `${VERDICT_WORDS[r.verdict] || r.verdict} (${r.by || "?"}, ${clock(r.at)})` : "";
}

async function review(group, verdict) {
  const head = groupHead(group);
  const rows = [$(".card-review", group.card), $("#clip-dialog .clip-review")];
  for (const row of rows) for (const b of $$("button", row)) b.disabled = true;
  try {
    const updated = await api(`v1/alerts/${enc(head.id)}/review`, {
      method: "POST", body: { verdict, by: state.operator || "operator" } });
    for (const e of [...group.events]) onEvent({ ...e, review: updated.review }, false);
    showReview($("#clip-dialog .clip-review"), groupHead(group), group.events);
  } catch (err) {
    if (!(err instanceof AuthError)) $(".review-info", rows[0]).textContent = `review failed: ${err.message}`;
  } finally {
    for (const row of rows) for (const b of $$("button", row)) b.disabled = false;
  }
}

// newest activity first
function placeCard(group) {
  const list = $("#alerts");
  const t = groupLatest(group);
  group.card.dataset.latest = String(t);
  let before = null;
  for (const el of list.children) {
    if (el !== group.card && Number(el.dataset.latest) < t) { before = el; break; }
  }
  if (before) { if (group.card.nextElementSibling !== before) list.insertBefore(group.card, before); } else if (group.card.parentElement !== list || group.card.nextElementSibling) {
    list.appendChild(group.card);
  }
  while (list.children.length > ALERTS_SHOWN) {
    const last = list.lastElementChild;
    for (const [k, g] of state.groups) if (g.card === last) { state.groups.delete(k); g.events.forEach((e) => state.alerts.delete(e.id)); }
    last.remove();
  }
}

// Snapshots need the key, which an <img src> cannot send: fetch, then show a blob URL.
async function loadSnapshot(group, ev) {
  if (!ev || group.snapshotFor === ev.id) return;
  group.snapshotFor = ev.id;
  const img = $(".snapshot", group.card);
  try {
    const res = await api(`v1/alerts/${enc(ev.id)}/snapshot.jpg`, { raw: true });
    if (res.status === 404) { img.alt = "no snapshot"; return; } // gone for good: do not ask again
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const url = URL.createObjectURL(await res.blob());
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = url;
    img.alt = `Snapshot of ${ev.source}, person #${ev.track_id}`;
  } catch (err) {
    group.snapshotFor = null; // try again on the next update
    img.alt = "snapshot unavailable";
  }
}

// One POST acknowledges the whole fall (the service spreads it over the fall's other events and
// its later ones); the card's other events take the same ack.
async function acknowledge(group) {
  const btn = $(".ack-btn", group.card);
  btn.disabled = true;
  try {
    const head = groupHead(group);
    const updated = await api(`v1/alerts/${enc(head.id)}/ack`, {
      method: "POST", body: { by: state.operator || "operator", comment: null },
    });
    const ack = (updated && updated.ack) || { by: state.operator || "operator", at: Date.now() / 1000, comment: null };
    for (const e of [...group.events]) {
      onEvent(e.id === head.id && updated && updated.id ? updated : { ...e, acked: true, ack }, false);
    }
    showError($("#alerts-error"), "");
  } catch (err) {
    if (!(err instanceof AuthError)) showError($("#alerts-error"), `acknowledge: ${err.message}`);
  } finally {
    btn.disabled = false;
    updateAlertCounts();
  }
}

// The cards ticked, or every open card of the selected camera: one POST /v1/alerts/ack.
export function updateBulkAck() {
  const picked = [...state.groups.values()].filter((g) => g.card && $(".select-box", g.card).checked && !groupAcked(g));
  const sel = $("#ack-selected");
  sel.disabled = picked.length === 0;
  sel.textContent = picked.length ? `Acknowledge selected (${picked.length})` : "Acknowledge selected";
  const cam = state.selected;
  const open = cam ? [...state.groups.values()].filter((g) => !groupAcked(g) && groupHead(g).source === cam).length : 0;
  const all = $("#ack-camera");
  all.hidden = open === 0;
  all.textContent = `Acknowledge all of ${cam || ""} (${open})`;
}

async function acknowledgeMany(selection) {
  const buttons = [$("#ack-selected"), $("#ack-camera")];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const body = { by: state.operator || "operator", comment: null, ...selection };
    const result = await api("v1/alerts/ack", { method: "POST", body });
    for (const alert of (result && result.acked) || []) {
      const group = state.groups.get(groupKey(alert));
      onEvent(alert, false);
      if (group) for (const e of [...group.events]) if (!e.acked) onEvent({ ...e, acked: true, ack: alert.ack }, false);
    }
    showError($("#alerts-error"), "");
  } catch (err) {
    if (!(err instanceof AuthError)) showError($("#alerts-error"), `acknowledge: ${err.message}`);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    updateAlertCounts();
  }
}

export function acknowledgeSelected() {
  const ids = [...state.groups.values()]
    .filter((g) => g.card && $(".select-box", g.card).checked && !groupAcked(g))
    .map((g) => groupHead(g).id);
  if (ids.length) acknowledgeMany({ ids });
}

export function acknowledgeCamera() {
  if (state.selected) acknowledgeMany({ source: state.selected });
}

function updateAlertCounts() {
  let open = 0;
  for (const g of state.groups.values()) if (!groupAcked(g)) open += 1;
  const badge = $("#unacked-count");
  badge.textContent = String(open);
  badge.hidden = open === 0;
  $("#no-alerts").hidden = state.groups.size > 0;
  document.title = open ? `(${open}) Fall detection · operator` : "Fall detection · operator";
  updateBulkAck();
  const banner = $("#fall-banner");
  if (!banner.hidden) {
    const g = state.groups.get(banner.dataset.group);
    if (!g || groupAcked(g)) hideBanner();
  }
  document.body.classList.toggle("alarm", !$("#fall-banner").hidden);
}

// At first load: the newest fall that is unacknowledged, not over (nobody seen getting up) and recent
// rings, so an operator who opens the page while someone is down is told at once.
let rangAtLoad = false;

function ringOpenFall() {
  if (rangAtLoad) return; // two first loads may overlap (start, and the alert feed opening)
  rangAtLoad = true;
  const now = Date.now() / 1000;
  let newest = null;
  for (const g of state.groups.values()) {
    if (groupAcked(g) || g.events.some(recovered)) continue;
    if (now - groupLatest(g) > RING_HISTORY_S) continue;
    if (!newest || groupLatest(g) > groupLatest(newest)) newest = g;
  }
  if (newest) {
    const alarms = newest.events.filter((e) => ALARM_TYPES.has(e.type) && !e.acked);
    if (alarms.length) cue(newest, alarms.reduce((a, b) => ((a.at ?? 0) >= (b.at ?? 0) ? a : b)));
  }
}

let seenAlertsOnce = false;

export async function refreshAlerts() {
  try {
    const data = await api("v1/alerts", { params: { limit: 100 } });
    for (const a of (data && data.items) || []) {
      // alerts made while this page was away ring; the history at first load does not...
      onEvent(a, seenAlertsOnce);
    }
    if (!seenAlertsOnce) ringOpenFall(); // ...except a recent fall nobody has handled yet
    seenAlertsOnce = true;
    showError($("#alerts-error"), "");
  } catch (err) {
    if (!(err instanceof AuthError)) showError($("#alerts-error"), `alerts: ${err.message}`);
  }
}
