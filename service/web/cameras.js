// Operator page: the cameras: one tile per camera, its live picture with the boxes, labels and
// zones of each frame result, its stats line; the camera list, selection and removal.

import { EVENT_TYPES, $, enc, state, num, showError, drawBackdrop } from "./common.js";
import { AuthError, wsUrl, api, ReconnectingSocket, checkAuthSoon } from "./api.js";
import { refreshTimeline } from "./timeline.js";
import { onEvent, updateBulkAck } from "./alerts.js";
import { drawZones, openZoneEditor } from "./zones.js";

const ACTION_COLORS = { fall: "#ff453a", sit: "#ffb020", stand: "#32d74b", lie: "#bf5af2" }; // = style.css
const NOT_DOWN_COLOR = "#64d2ff"; // a pose that is no alert's: not red

const STATE_LABELS = {
  connecting: "connecting", live: "live", stalled: "stalled", backoff: "backing off", stopped: "stopped",
};

const PREVIEW_MIN_MS = 80; // at most ~12 pictures/s per camera; boxes still follow every result
const PREVIEW_IDLE_MS = 2000; // camera not live, or page hidden
const PREVIEW_MISSING_MS = 30000; // the service has no preview endpoint: look again later
const RESULTS_KEPT = 120; // recent frame results per camera, to pair a picture with its own boxes
const STALE_MS = 2000; // no result for this long: say so on the picture

class CameraTile {
  constructor(status) {
    this.id = status.id;
    this.el = $("#camera-template").content.firstElementChild.cloneNode(true);
    this.el.dataset.camera = this.id;
    this.canvas = $("canvas", this.el);
    this.ctx = this.canvas.getContext("2d");
    $(".camera-name", this.el).textContent = this.id;
    $(".camera-name", this.el).addEventListener("click", () => selectCamera(this.id));
    this.canvas.addEventListener("click", () => selectCamera(this.id));
    $(".remove-btn", this.el).addEventListener("click", () => removeCamera(this.id));
    $(".zones-btn", this.el).addEventListener("click", () => openZoneEditor(this));
    $(".negative-btn", this.el).addEventListener("click", () => markNobodyFell(this));
    this.results = new Map(); // frame index -> frame result
    this.latest = null;
    this.lastResultAt = 0;
    this.image = null; // ImageBitmap of the latest preview picture
    this.imageFrame = null;
    this.highlight = null; // {box, until}: a timeline segment's box, shown for a while
    this.visible = true;
    this.destroyed = false;
    this.drawPending = false;
    this.socket = new ReconnectingSocket(() => wsUrl(`v1/streams/${enc(this.id)}/ws`), {
      onMessage: (msg) => this.onMessage(msg),
      onState: (s) => { $(".ws-state", this.el).textContent = s === "open" ? "" : `results: ${s}`; },
      onTrouble: checkAuthSoon,
    });
    this.observer = new IntersectionObserver((entries) => {
      this.visible = entries.some((e) => e.isIntersecting);
    });
    this.observer.observe(this.el);
    this.update(status);
    this.socket.start();
    this.previewLoop();
    this.staleTimer = setInterval(() => this.scheduleDraw(), 1000);
    this.draw();
  }

  update(status) {
    this.status = status;
    const st = status.state || "connecting";
    this.el.dataset.state = st;
    $(".state-badge", this.el).textContent = STATE_LABELS[st] || st;
    $(".stats", this.el).textContent = statsText(status, this.latest);
    $(".stats", this.el).title = statsExplained(status, this.latest);
    const err = st === "live" ? "" : (status.last_error || "");
    $(".last-error", this.el).textContent = err;
  }

  onMessage(msg) {
    if (msg.type === "frame") {
      this.latest = msg;
      this.lastResultAt = performance.now();
      this.results.set(msg.frame, msg);
      if (this.results.size > RESULTS_KEPT) this.results.delete(this.results.keys().next().value);
      if (this.statsAt === undefined || this.lastResultAt - this.statsAt > 1000) { // latency follows the results, 1/s
        this.statsAt = this.lastResultAt;
        this.update(this.status);
      }
      this.scheduleDraw();
    } else if (EVENT_TYPES.has(msg.type)) {
      onEvent(msg, true);
    }
  }

  // Pull the latest processed picture, one request at a time (a slow link simply gets fewer
  // pictures, never a queue). The boxes come from the WebSocket, matched by frame index.
  async previewLoop() {
    while (!this.destroyed) {
      const started = performance.now();
      let wait = PREVIEW_MIN_MS;
      const live = this.status && this.status.state === "live";
      if (!state.key || document.hidden || !this.visible) {
        wait = PREVIEW_IDLE_MS;
      } else {
        try {
          const width = Math.min(1280, Math.ceil((this.canvas.clientWidth * (window.devicePixelRatio || 1)) / 160) * 160) || 640;
          const res = await api(`v1/streams/${enc(this.id)}/preview.jpg`, { raw: true, params: { max_width: width } });
          if (res.ok) {
            const frame = parseInt(res.headers.get("X-Frame-Index") || "", 10);
            const bitmap = await createImageBitmap(await res.blob());
            if (this.image && this.image.close) this.image.close();
            this.image = bitmap;
            this.imageFrame = Number.isFinite(frame) ? frame : null;
            this.scheduleDraw();
            if (!live) wait = PREVIEW_IDLE_MS;
          } else {
            // 404 while results flow: this service has no preview endpoint; look again later
            wait = res.status === 404 && this.latest ? PREVIEW_MISSING_MS : PREVIEW_IDLE_MS;
          }
        } catch (err) {
          wait = PREVIEW_IDLE_MS;
        }
      }
      await new Promise((r) => setTimeout(r, Math.max(0, wait - (performance.now() - started))));
    }
  }

  scheduleDraw() {
    if (this.drawPending || this.destroyed) return;
    this.drawPending = true;
    requestAnimationFrame(() => { this.drawPending = false; this.draw(); });
  }

  // The result to draw: the one of the picture's own frame when we still have it (boxes sit on
  // the person), else the newest (the picture lags or is missing).
  resultToDraw() {
    if (this.image && this.imageFrame !== null && this.results.has(this.imageFrame)) {
      return this.results.get(this.imageFrame);
    }
    return this.latest;
  }

  draw() {
    const res = this.resultToDraw();
    const img = this.image;
    const W = img ? img.width : (res && res.width) || this.status.width || 640;
    const H = img ? img.height : (res && res.height) || this.status.height || 360;
    if (this.canvas.width !== W || this.canvas.height !== H) {
      this.canvas.width = W;
      this.canvas.height = H;
    }
    const ctx = this.ctx;
    const unit = Math.max(1, W / 400); // line widths and text scale with the picture
    drawBackdrop(ctx, img, W, H, unit, "no picture: boxes only", true);
    drawZones(ctx, (this.status && this.status.zones) || [], W, H, unit); // under the boxes
    this.canvas.dataset.zones = String(((this.status && this.status.zones) || []).length);
    let drawn = 0;
    if (res) {
      const sx = res.width ? W / res.width : 1;
      const sy = res.height ? H / res.height : 1;
      const labels = [];
      for (const p of peopleToDraw(res.persons || [])) {
        labels.push(drawPerson(ctx, p, sx, sy, unit));
        drawn += 1;
      }
      this.canvas.dataset.labels = labels.join("|");
      this.canvas.dataset.frame = String(res.frame);
      if (res.width) this.canvas.dataset.scale = String(sx);
    }
    if (this.highlight && performance.now() < this.highlight.until && res) {
      const [x1, y1, x2, y2] = this.highlight.box;
      const sx = res.width ? W / res.width : 1;
      const sy = res.height ? H / res.height : 1;
      ctx.save();
      ctx.setLineDash([6 * unit, 4 * unit]);
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 2 * unit;
      ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
      ctx.restore();
    }
    this.canvas.dataset.boxes = String(drawn);
    const age = this.lastResultAt ? performance.now() - this.lastResultAt : Infinity;
    if (age > STALE_MS) {
      const text = this.lastResultAt ? `no results for ${Math.round(age / 1000)} s` : "waiting for results";
      ctx.font = `${Math.round(11 * unit)}px system-ui, sans-serif`;
      const w = ctx.measureText(text).width + 12 * unit;
      ctx.fillStyle = "rgba(0,0,0,0.65)";
      ctx.fillRect(W - w - 6 * unit, 6 * unit, w, 18 * unit);
      ctx.fillStyle = "#ffd60a";
      ctx.fillText(text, W - w, 19 * unit);
    }
  }

  showSegment(box) {
    this.highlight = { box, until: performance.now() + 4000 };
    this.scheduleDraw();
    setTimeout(() => this.scheduleDraw(), 4100);
  }

  destroy() {
    this.destroyed = true;
    this.socket.stop();
    this.observer.disconnect();
    clearInterval(this.staleTimer);
    if (this.image && this.image.close) this.image.close();
    this.el.remove();
  }
}

// "analysing 7.5 of 29.0 fps · 0.27 s behind live": the detector keeps up with what it can and
// skips the other frames on purpose, so the picture and the alerts stay live; a skip count that
// keeps growing is how that looks, not a fault (it is in the tooltip, with the rest).
function statsText(status, latest) {
  if (status.state !== "live" && !status.fps_processed) return "";
  const behind = latest && typeof latest.latency_ms === "number" ? ` · ${num(latest.latency_ms / 1000, 2)} s behind live` : "";
  return `analysing ${num(status.fps_processed)} of ${num(status.fps_in)} fps${behind}`;
}

function statsExplained(status, latest) {
  const lines = [
    `The camera sends ${num(status.fps_in)} frames per second; the detector analyses ${num(status.fps_processed)} of them.`,
    "The others are skipped on purpose, so that the picture and the alerts stay live instead of falling behind.",
    `So far: ${status.frames_received ?? "?"} frames received, ${status.frames_processed ?? "?"} analysed, ` +
      `${status.frames_dropped ?? "?"} skipped.`,
  ];
  if (latest && typeof latest.latency_ms === "number") {
    lines.push(`Behind live: ${num(latest.latency_ms, 0)} ms from capture to result.`);
  }
  if (status.width) lines.push(`Picture: ${status.width}x${status.height}.`);
  if (status.url) lines.push(status.url);
  return lines.join("\n");
}

// A detection the tracker has not (yet) made a person of has no track id. One that overlaps a
// tracked person is that person seen twice (issue 25: "#? stand", "#? stand" and "#0 sit" on one
// body): it is not drawn. One on its own is drawn, dashed, as "new" (not tracked yet).
function overlapOfSmaller(a, b) {
  const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  if (w <= 0 || h <= 0) return 0;
  const area = (r) => Math.max(1e-6, (r[2] - r[0]) * (r[3] - r[1]));
  return (w * h) / Math.min(area(a), area(b));
}

function peopleToDraw(persons) {
  const tracked = persons.filter((p) => p.track_id !== null && p.track_id !== undefined);
  const kept = [...tracked];
  for (const p of persons) {
    if (tracked.includes(p)) continue;
    if (tracked.some((t) => overlapOfSmaller(t.box, p.box) > 0.5)) continue;
    if (kept.some((k) => k !== p && !tracked.includes(k) && overlapOfSmaller(k.box, p.box) > 0.5)) continue;
    kept.push(p);
  }
  return kept;
}

// What a box says and its colour. `fall` means what an alert means (the track is down and not in
// a bed zone): only then is a box red. A person in a bed zone (`in_bed`: the bed's name) is
// "in bed", in the legend's purple, whatever the model calls the pose. Otherwise the track's
// smoothed `posture`, or this box's own `action` when there is none (untracked, older service).
function personLook(p) {
  if (p.in_bed) return { text: `in bed (${p.in_bed})`, color: ACTION_COLORS.lie, fall: false };
  if (p.fall === true) return { text: "fall", color: ACTION_COLORS.fall, fall: true };
  const posture = p.posture || p.action || "?";
  const color = posture === "fall" ? NOT_DOWN_COLOR : ACTION_COLORS[posture] || NOT_DOWN_COLOR;
  return { text: posture, color, fall: false };
}

function drawPerson(ctx, p, sx, sy, unit) {
  const [x1, y1, x2, y2] = p.box;
  const look = personLook(p);
  const color = look.color;
  const x = x1 * sx, y = y1 * sy, w = (x2 - x1) * sx, h = (y2 - y1) * sy;
  const untracked = p.track_id === null || p.track_id === undefined;
  ctx.lineWidth = (look.fall ? 3 : 2) * unit;
  ctx.strokeStyle = color;
  if (untracked) ctx.setLineDash([5 * unit, 4 * unit]);
  ctx.strokeRect(x, y, w, h);
  ctx.setLineDash([]);
  const who = untracked ? "new" : `#${p.track_id}`; // "new": seen, not tracked yet (no id)
  const label = `${who} ${look.text} ${Math.round((p.score || 0) * 100)}%`;
  ctx.font = `${look.fall ? "bold " : ""}${Math.round(11 * unit)}px system-ui, sans-serif`;
  const tw = ctx.measureText(label).width + 8 * unit;
  const th = 16 * unit;
  const ty = y - th >= 0 ? y - th : y; // above the box, or inside it at the top edge
  ctx.fillStyle = color;
  ctx.fillRect(x - ctx.lineWidth / 2, ty, tw, th);
  ctx.fillStyle = "#000";
  ctx.fillText(label, x + 4 * unit - ctx.lineWidth / 2, ty + 12 * unit);
  return label;
}

export async function refreshCameras() {
  let data;
  try {
    data = await api("v1/streams");
  } catch (err) {
    showError($("#cameras-error"), err instanceof AuthError ? "" : `camera list: ${err.message}`);
    return;
  }
  showError($("#cameras-error"), "");
  const items = (data && data.items) || [];
  const seen = new Set();
  for (const status of items) {
    seen.add(status.id);
    const tile = state.cameras.get(status.id);
    if (tile) {
      tile.update(status);
    } else {
      const t = new CameraTile(status);
      state.cameras.set(status.id, t);
      $("#cameras").appendChild(t.el);
    }
  }
  for (const [id, tile] of state.cameras) {
    if (!seen.has(id)) { tile.destroy(); state.cameras.delete(id); }
  }
  if (!state.selected || !state.cameras.has(state.selected)) {
    selectCamera(items.length ? items[0].id : null);
  }
  $("#camera-count").textContent = items.length ? `(${items.length})` : "";
  $("#no-cameras").hidden = items.length > 0;
}

async function removeCamera(id) {
  if (!window.confirm(`Remove camera "${id}"? The service stops reading it.`)) return;
  try {
    await api(`v1/streams/${enc(id)}`, { method: "DELETE" });
    await refreshCameras();
  } catch (err) {
    if (!(err instanceof AuthError)) showError($("#cameras-error"), `remove ${id}: ${err.message}`);
  }
}

export function selectCamera(id) {
  state.selected = id;
  for (const [cid, tile] of state.cameras) tile.el.classList.toggle("selected", cid === id);
  $("#timeline-camera").textContent = id ? `· ${id}` : "";
  state.lastTimeline = null;
  updateBulkAck();
  refreshTimeline();
}

async function markNobodyFell(tile) {
  const btn = $(".negative-btn", tile.el);
  btn.disabled = true;
  try {
    const neg = await api(`v1/streams/${enc(tile.id)}/negative`, {
      method: "POST", body: { by: state.operator || "operator" } });
    btn.textContent = `Kept (${neg.boxes.length} ${neg.boxes.length === 1 ? "person" : "people"}, no fall)`;
    setTimeout(() => { btn.textContent = "Nobody fell here"; }, 4000);
  } catch (err) {
    if (!(err instanceof AuthError)) { btn.textContent = `Not kept: ${err.message}`; setTimeout(() => { btn.textContent = "Nobody fell here"; }, 6000); }
  } finally {
    btn.disabled = false;
  }
}
