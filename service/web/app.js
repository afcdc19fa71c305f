// Operator page of the fall-detection service: cameras with live boxes, fall alerts, timelines.
// Plain script, no build step, no third-party code. Talks only to its own origin:
//   GET  v1/streams, POST v1/streams, DELETE v1/streams/{id}      camera list and state (polled)
//   WS   v1/streams/{id}/ws  (key as subprotocol falldet.key.*)    frame results (boxes) + events
//   GET  v1/streams/{id}/preview.jpg                              latest processed picture (pulled)
//   GET  v1/streams/{id}/timeline                                 action segments per person
//   WS   v1/events           (key as subprotocol falldet.key.*)    events of all cameras
//   GET  v1/alerts, POST v1/alerts/{id}/ack, GET v1/alerts/{id}/snapshot.jpg
// Every URL is relative to the page, so the page also works behind a path prefix.
"use strict";

(() => {
  const STORE = { key: "falldet.apiKey", operator: "falldet.operator", sound: "falldet.sound" };
  const EVENT_TYPES = new Set(["fall_alert", "still_down", "fall_cleared", "camera_offline", "camera_online"]);
  const ALARM_TYPES = new Set(["fall_alert", "still_down", "camera_offline"]); // events that need a person to look
  const ACTION_COLORS = { fall: "#ff453a", sit: "#ffb020", stand: "#32d74b", lie: "#bf5af2" };
  const STATE_LABELS = {
    connecting: "connecting", live: "live", stalled: "stalled", backoff: "backing off", stopped: "stopped",
  };
  const CAMERA_POLL_MS = 2000;
  const ALERTS_POLL_MS = 15000;
  const TIMELINE_POLL_MS = 3000;
  const PREVIEW_MIN_MS = 80; // at most ~12 pictures/s per camera; boxes still follow every result
  const PREVIEW_IDLE_MS = 2000; // camera not live, or page hidden
  const PREVIEW_MISSING_MS = 30000; // the service has no preview endpoint: look again later
  const RESULTS_KEPT = 120; // recent frame results per camera, to pair a picture with its own boxes
  const STALE_MS = 2000; // no result for this long: say so on the picture
  const ALERTS_SHOWN = 200;
  const RING_HISTORY_S = 600; // at first load, an open fall younger than this still rings

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- state

  const state = {
    key: localStorage.getItem(STORE.key) || "",
    operator: localStorage.getItem(STORE.operator) || "",
    sound: localStorage.getItem(STORE.sound) !== "off",
    started: false,
    cameras: new Map(), // id -> CameraTile
    selected: null, // camera id whose timeline is shown
    alerts: new Map(), // alert id -> alert JSON
    groups: new Map(), // lifecycle key -> {key, events: [], card, snapshotFor}
    dismissedCue: new Set(), // group keys whose banner the operator closed
    lastTimeline: null,
  };

  // ---------------------------------------------------------------- API

  class AuthError extends Error {}

  function apiUrl(path, params) {
    const url = new URL(path, document.baseURI);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
    }
    return url;
  }

  function wsUrl(path, params) {
    const url = apiUrl(path, params);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  }

  // The key travels as a WebSocket subprotocol (base64url), never in the URL: URLs end up in
  // access logs, proxies and browser history. The server answers with "falldet".
  function wsProtocols() {
    const bytes = new TextEncoder().encode(state.key);
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    const b64 = btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    return ["falldet", `falldet.key.${b64}`];
  }

  function errorText(body, status) {
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => `${(d.loc || []).slice(1).join(".") || "input"}: ${d.msg}`).join("; ");
    }
    return `HTTP ${status}`;
  }

  // fetch with the key; JSON in and out; 401/403 -> AuthError (and the sign-in dialog)
  async function api(path, { method = "GET", body, params, raw = false } = {}) {
    const headers = { "X-API-Key": state.key };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (!raw) headers.Accept = "application/json";
    const res = await fetch(apiUrl(path, params), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    });
    if (res.status === 401 || res.status === 403) {
      const err = new AuthError("The API key was refused.");
      onAuthError(err);
      throw err;
    }
    if (raw) return res;
    let data = null;
    const text = await res.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!res.ok) {
      const err = new Error(errorText(data, res.status));
      err.status = res.status;
      throw err;
    }
    return data;
  }

  // ---------------------------------------------------------------- WebSocket with backoff

  // Reconnects with exponential backoff and jitter. The attempt count resets only when a message
  // arrives, so a server that accepts and then closes at once does not make a tight loop.
  class ReconnectingSocket {
    constructor(urlFn, { onMessage, onState, onTrouble, baseMs = 500, maxMs = 15000 }) {
      Object.assign(this, { urlFn, onMessage, onState, onTrouble, baseMs, maxMs });
      this.ws = null;
      this.attempts = 0;
      this.timer = null;
      this.stopped = true;
    }

    start() {
      if (!this.stopped) return;
      this.stopped = false;
      this._connect();
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      if (this.ws) { this.ws.onclose = null; this.ws.close(1000); this.ws = null; }
      this.onState("closed");
    }

    restart() { // e.g. after a new key: connect again now
      this.stop();
      this.attempts = 0;
      this.start();
    }

    _connect() {
      clearTimeout(this.timer);
      this.onState("connecting");
      let ws;
      try {
        ws = new WebSocket(this.urlFn(), wsProtocols());
      } catch (err) {
        this._retry();
        return;
      }
      this.ws = ws;
      ws.onopen = () => this.onState("open");
      ws.onmessage = (ev) => {
        this.attempts = 0;
        if (typeof ev.data !== "string") return;
        let msg;
        try { msg = JSON.parse(ev.data); } catch { return; }
        this.onMessage(msg);
      };
      ws.onclose = (ev) => {
        this.ws = null;
        if (this.stopped) return;
        if (this.onTrouble && (ev.code === 1008 || ev.code === 4401 || ev.code === 4403 || this.attempts >= 2)) {
          this.onTrouble(ev);
        }
        this._retry();
      };
    }

    _retry() {
      const delay = Math.min(this.maxMs, this.baseMs * 2 ** this.attempts) * (0.5 + Math.random() / 2);
      this.attempts += 1;
      this.onState(`retry in ${(delay / 1000).toFixed(1)} s`);
      this.timer = setTimeout(() => this._connect(), delay);
    }
  }

  // A closed socket may mean a refused key (a rejected handshake is invisible to the page):
  // ask the REST API, which answers 401 clearly. At most once every 10 s.
  let lastAuthCheck = 0;
  function checkAuthSoon() {
    const now = Date.now();
    if (now - lastAuthCheck < 10000) return;
    lastAuthCheck = now;
    api("v1/streams").catch(() => {});
  }

  // ---------------------------------------------------------------- formatting

  function clock(epochS) {
    if (typeof epochS !== "number" || !isFinite(epochS)) return "";
    return new Date(epochS * 1000).toLocaleTimeString([], { hour12: false });
  }

  function dateTime(epochS) {
    if (typeof epochS !== "number" || !isFinite(epochS)) return "";
    const d = new Date(epochS * 1000);
    const today = new Date().toDateString() === d.toDateString();
    return today ? clock(epochS) : `${d.toLocaleDateString()} ${clock(epochS)}`;
  }

  function duration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "";
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function num(v, digits = 1) {
    return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "–";
  }

  function showError(el, text) {
    el.textContent = text || "";
    el.hidden = !text;
  }

  // ---------------------------------------------------------------- cameras

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

  // The camera's picture, or a dark frame saying why there is none (live view and zone editor).
  function drawBackdrop(ctx, img, W, H, unit, message, centred) {
    if (img) {
      ctx.drawImage(img, 0, 0, W, H);
      return;
    }
    ctx.fillStyle = "#15171c";
    ctx.fillRect(0, 0, W, H);
    ctx.fillStyle = "#5c6370";
    ctx.font = `${Math.round(12 * unit)}px system-ui, sans-serif`;
    ctx.textAlign = centred ? "center" : "left";
    ctx.fillText(message, centred ? W / 2 : 10 * unit, centred ? H / 2 : 20 * unit);
    ctx.textAlign = "left";
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

  function drawPerson(ctx, p, sx, sy, unit) {
    const [x1, y1, x2, y2] = p.box;
    const color = ACTION_COLORS[p.action] || "#64d2ff";
    const x = x1 * sx, y = y1 * sy, w = (x2 - x1) * sx, h = (y2 - y1) * sy;
    const untracked = p.track_id === null || p.track_id === undefined;
    ctx.lineWidth = (p.fall ? 3 : 2) * unit;
    ctx.strokeStyle = color;
    if (untracked) ctx.setLineDash([5 * unit, 4 * unit]);
    ctx.strokeRect(x, y, w, h);
    ctx.setLineDash([]);
    const who = untracked ? "new" : `#${p.track_id}`; // "new": seen, not tracked yet (no id)
    const label = `${who} ${p.action} ${Math.round((p.score || 0) * 100)}%`;
    ctx.font = `${p.fall ? "bold " : ""}${Math.round(11 * unit)}px system-ui, sans-serif`;
    const tw = ctx.measureText(label).width + 8 * unit;
    const th = 16 * unit;
    const ty = y - th >= 0 ? y - th : y; // above the box, or inside it at the top edge
    ctx.fillStyle = color;
    ctx.fillRect(x - ctx.lineWidth / 2, ty, tw, th);
    ctx.fillStyle = "#000";
    ctx.fillText(label, x + 4 * unit - ctx.lineWidth / 2, ty + 12 * unit);
    return label;
  }

  async function refreshCameras() {
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

  function selectCamera(id) {
    state.selected = id;
    for (const [cid, tile] of state.cameras) tile.el.classList.toggle("selected", cid === id);
    $("#timeline-camera").textContent = id ? `· ${id}` : "";
    state.lastTimeline = null;
    updateBulkAck();
    refreshTimeline();
  }

  // ---------------------------------------------------------------- timeline

  // SourcePipeline.timeline() is read leniently: tracks as a list ({track_id, segments}) or as an
  // object keyed by track id; times as pts seconds (start_s/end_s) of the source.
  function normalizeTimeline(data) {
    let tracks = data && (data.tracks ?? data.items ?? data);
    if (tracks && !Array.isArray(tracks) && typeof tracks === "object") {
      tracks = Object.entries(tracks).map(([id, t]) => (Array.isArray(t) ? { track_id: id, segments: t } : { track_id: id, ...t }));
    }
    if (!Array.isArray(tracks)) tracks = [];
    let latest = -Infinity, earliest = Infinity;
    const out = [];
    for (const t of tracks) {
      const segs = [];
      for (const s of t.segments || t.actions || []) {
        const start = s.start_s ?? s.start_pts_s ?? s.start;
        const end = s.end_s ?? s.end_pts_s ?? s.end ?? start;
        if (typeof start !== "number" || typeof end !== "number") continue;
        segs.push({ ...s, start, end });
        latest = Math.max(latest, end);
        earliest = Math.min(earliest, start);
      }
      if (segs.length) out.push({ id: t.track_id ?? t.id, open: t.open !== false, segments: segs });
    }
    const now = Math.max(latest, ...[data?.now_s, data?.pts_s].filter((v) => typeof v === "number"));
    out.sort((a, b) => b.segments[b.segments.length - 1].end - a.segments[a.segments.length - 1].end);
    // wall clock of a pts time, when the service says which wall-clock time its "now" is
    const wall = typeof data?.now_at === "number" && typeof data?.now_s === "number"
      ? (t) => data.now_at - (data.now_s - t) : null;
    return { tracks: out, now, earliest, wall };
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (parent) parent.appendChild(el);
    return el;
  }

  function tickStep(span) {
    for (const s of [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]) if (span / s <= 8) return s;
    return 7200;
  }

  function ago(s) { // tick labels: -30 s, -1:30, -2 min
    if (s < 60) return `-${s} s`;
    const m = Math.floor(s / 60), r = Math.round(s - m * 60);
    return r ? `-${m}:${String(r).padStart(2, "0")}` : `-${m} min`;
  }

  function boxOf(seg) {
    const b = seg.box || seg.end_box || seg.last_box || seg.start_box;
    return Array.isArray(b) && b.length === 4 ? b : null;
  }

  function renderTimeline(data) {
    const host = $("#timeline");
    const tl = normalizeTimeline(data);
    host.replaceChildren();
    if (!tl.tracks.length) {
      const p = document.createElement("p");
      p.className = "muted empty";
      p.textContent = "No action segments yet.";
      host.appendChild(p);
      return;
    }
    const windowS = Number($("#timeline-window").value);
    const tile = state.cameras.get(state.selected);
    const livePts = tile && tile.latest && typeof tile.latest.pts_s === "number" ? tile.latest.pts_s : -Infinity;
    const t1 = Math.max(tl.now, livePts); // a live camera's "now" runs ahead of its last segment
    // the window is the most shown: a shorter history fills the width (at least 10 s)
    const fit = Math.min(tl.earliest, t1 - 10);
    const t0 = windowS > 0 ? Math.max(t1 - windowS, fit) : fit;
    // an open segment of a live track was still going on at the service's "now": it goes on to ours
    const since = t1 - tl.now;
    const endOf = (t, s) => (t.open && s.open && since > 0 && since < 10 ? s.end + since : s.end);
    const tracks = tl.tracks.filter((t) => t.segments.some((s) => s.end >= t0)).slice(0, 24);
    const gutter = 64, row = 22, top = 6, axis = 20;
    const width = Math.max(320, host.clientWidth || 800);
    const height = top + tracks.length * row + axis;
    const plotW = width - gutter - 8;
    const x = (t) => gutter + ((Math.max(t0, Math.min(t1, t)) - t0) / (t1 - t0 || 1)) * plotW;
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Action segments per person" }, host);
    const step = tickStep(t1 - t0);
    for (let k = 0; t1 - k * step >= t0 - 1e-9; k++) {
      const tx = x(t1 - k * step);
      svg("line", { x1: tx, x2: tx, y1: top, y2: height - axis, class: "grid" }, root);
      const label = svg("text", { x: tx, y: height - 6, class: "tick", "text-anchor": "middle" }, root);
      label.textContent = k === 0 ? "now" : ago(k * step);
    }
    tracks.forEach((t, i) => {
      const y = top + i * row;
      const name = svg("text", { x: 4, y: y + row * 0.68, class: "track-label" }, root);
      name.textContent = `#${t.id}`;
      for (const s of t.segments) {
        if (s.end < t0) continue;
        const xa = x(s.start), xb = x(endOf(t, s));
        const rect = svg("rect", {
          x: xa, y: y + 3, width: Math.max(2, xb - xa), height: row - 6, rx: 3,
          class: `seg action-${s.action}`, "data-action": s.action, "data-track": t.id,
        }, root);
        const where = boxOf(s);
        const when = tl.wall ? `${clock(tl.wall(s.start))}–${clock(tl.wall(s.end))}` : `${num(s.start)}–${num(s.end)} s`;
        const desc = `person #${t.id}: ${s.action} ${when} (${duration(s.end - s.start)})` +
          (s.start_frame !== undefined ? `, frames ${s.start_frame}–${s.end_frame}` : "") +
          (where ? `, at x ${Math.round(where[0])}–${Math.round(where[2])}, y ${Math.round(where[1])}–${Math.round(where[3])} px` : "");
        svg("title", {}, rect).textContent = desc;
        rect.addEventListener("click", () => {
          $("#timeline-detail").textContent = desc;
          const tile = state.cameras.get(state.selected);
          if (where && tile) tile.showSegment(where);
        });
      }
    });
  }

  async function refreshTimeline() {
    const id = state.selected;
    if (!id) {
      $("#timeline").replaceChildren();
      return;
    }
    try {
      const data = await api(`v1/streams/${enc(id)}/timeline`);
      if (id !== state.selected) return;
      state.lastTimeline = data;
      renderTimeline(data);
    } catch (err) {
      if (err instanceof AuthError || id !== state.selected) return;
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = `timeline: ${err.message}`;
      $("#timeline").replaceChildren(p);
    }
  }

  // ---------------------------------------------------------------- alerts

  // One card per fall: its events share `fall_id` (the fall_alert's id); events stored before
  // fall_id existed are grouped by camera, track and fall onset.
  function groupKey(a) {
    return a.fall_id || `${a.source}\u0000${a.track_id}\u0000${a.started_frame ?? a.frame}`;
  }

  function onEvent(a, fresh) {
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

  function groupHead(group) {
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

  // ---------------------------------------------------------------- fall clips

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
  async function refreshPendingClips() {
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

  // ---------------------------------------------------------------- reviews (site training)

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

  // ---------------------------------------------------------------- zones (bed / ignore)

  const ZONE_COLORS = { bed: "#64d2ff", ignore: "#aeaeb2" };

  // Zones are polygons in fractions of the picture (0..1), drawn under the boxes.
  function drawZones(ctx, zones, W, H, unit, open) {
    const trace = (pts) => pts.forEach(([x, y], i) => (i ? ctx.lineTo(x * W, y * H) : ctx.moveTo(x * W, y * H)));
    for (const z of zones) {
      if (!z.points || z.points.length < 3) continue;
      ctx.save();
      ctx.beginPath();
      trace(z.points);
      ctx.closePath();
      ctx.fillStyle = z.kind === "ignore" ? "rgba(142, 142, 147, 0.30)" : "rgba(100, 210, 255, 0.16)";
      ctx.fill();
      ctx.setLineDash(z.kind === "ignore" ? [5 * unit, 4 * unit] : []);
      ctx.strokeStyle = ZONE_COLORS[z.kind] || "#ffffff";
      ctx.lineWidth = 1.5 * unit;
      ctx.stroke();
      const [lx, ly] = z.points.reduce((a, p) => (p[1] < a[1] ? p : a)); // label at the top point
      ctx.font = `${Math.round(10 * unit)}px system-ui, sans-serif`;
      ctx.fillStyle = ZONE_COLORS[z.kind] || "#ffffff";
      ctx.fillText(`${z.name} · ${z.kind}`, lx * W + 4 * unit, Math.max(ly * H - 4 * unit, 12 * unit));
      ctx.restore();
    }
    if (open && open.length) { // the zone being drawn: its points and edges so far
      ctx.save();
      ctx.strokeStyle = "#ffd60a";
      ctx.fillStyle = "#ffd60a";
      ctx.lineWidth = 2 * unit;
      ctx.beginPath();
      trace(open);
      ctx.stroke();
      for (const [x, y] of open) { ctx.beginPath(); ctx.arc(x * W, y * H, 3.5 * unit, 0, 2 * Math.PI); ctx.fill(); }
      ctx.restore();
    }
  }

  const zoneEditor = { tile: null, zones: [], points: [] };

  function openZoneEditor(tile) {
    zoneEditor.tile = tile;
    zoneEditor.zones = ((tile.status && tile.status.zones) || []).map((z) => ({ ...z, points: z.points.map((p) => [...p]) }));
    zoneEditor.points = [];
    $("#zones-camera").textContent = tile.id;
    $("#zone-name").value = "";
    showError($("#zones-error"), "");
    renderZoneEditor();
    $("#zones-dialog").showModal();
  }

  function renderZoneEditor() {
    const { tile, zones, points } = zoneEditor;
    const canvas = $("#zones-canvas");
    const img = tile && tile.image;
    const W = img ? img.width : (tile && tile.status && tile.status.width) || 640;
    const H = img ? img.height : (tile && tile.status && tile.status.height) || 360;
    if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
    const ctx = canvas.getContext("2d");
    const unit = Math.max(1, W / 400);
    drawBackdrop(ctx, img, W, H, unit, "no picture yet: draw on the empty frame", false);
    drawZones(ctx, zones, W, H, unit, points);
    canvas.dataset.points = String(points.length);
    $("#zone-close").disabled = points.length < 3;
    $("#zone-undo").disabled = points.length === 0;
    const list = $("#zone-list");
    list.replaceChildren();
    for (const z of zones) {
      const li = document.createElement("li");
      li.dataset.zone = z.name;
      const swatch = document.createElement("span");
      swatch.className = `zone-swatch zone-${z.kind}`;
      const label = document.createElement("span");
      label.textContent = `${z.name} (${z.kind}, ${z.points.length} points)`;
      const del = document.createElement("button");
      del.type = "button";
      del.className = "zone-delete";
      del.textContent = "Delete";
      del.addEventListener("click", () => { zoneEditor.zones = zoneEditor.zones.filter((x) => x !== z); renderZoneEditor(); });
      li.append(swatch, label, del);
      list.append(li);
    }
    $("#zones-empty").hidden = zones.length > 0;
  }

  function zoneCanvasClick(event) {
    const canvas = $("#zones-canvas");
    const rect = canvas.getBoundingClientRect();
    const round = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;
    zoneEditor.points.push([round((event.clientX - rect.left) / rect.width), round((event.clientY - rect.top) / rect.height)]);
    renderZoneEditor();
  }

  function closeZoneShape() {
    const name = $("#zone-name").value.trim();
    const err = $("#zones-error");
    if (zoneEditor.points.length < 3) return showError(err, "A zone needs at least 3 points: click on the picture.");
    if (!name) return showError(err, "Give the zone a name (for example \"bed 1\").");
    if (zoneEditor.zones.some((z) => z.name === name)) return showError(err, `There is already a zone named "${name}".`);
    zoneEditor.zones.push({ name, kind: $("#zone-kind").value, points: zoneEditor.points });
    zoneEditor.points = [];
    $("#zone-name").value = "";
    showError(err, "");
    renderZoneEditor();
  }

  async function saveZones(event) {
    event.preventDefault();
    const { tile } = zoneEditor;
    if (zoneEditor.points.length) {
      return showError($("#zones-error"), "Finish the zone being drawn (Close shape) or undo its points first.");
    }
    try {
      const res = await api(`v1/streams/${enc(tile.id)}/zones`, { method: "PUT", body: { zones: zoneEditor.zones } });
      tile.status = { ...tile.status, zones: res.zones };
      tile.scheduleDraw();
      $("#zones-dialog").close();
    } catch (err) {
      if (!(err instanceof AuthError)) showError($("#zones-error"), `Not saved: ${err.message}`);
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

  // ---------------------------------------------------------------- acknowledge many

  // The cards ticked, or every open card of the selected camera: one POST /v1/alerts/ack.
  function updateBulkAck() {
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

  function acknowledgeSelected() {
    const ids = [...state.groups.values()]
      .filter((g) => g.card && $(".select-box", g.card).checked && !groupAcked(g))
      .map((g) => groupHead(g).id);
    if (ids.length) acknowledgeMany({ ids });
  }

  function acknowledgeCamera() {
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
  async function refreshAlerts() {
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

  // ---------------------------------------------------------------- cues

  let audio = null;
  function unlockAudio() { // browsers allow sound only after a user gesture
    if (!audio) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (Ctx) audio = new Ctx();
    }
    if (audio && audio.state === "suspended") audio.resume().catch(() => {});
  }

  function beep() {
    if (!state.sound || !audio) return false;
    const t = audio.currentTime + 0.02;
    [880, 660, 880, 660].forEach((f, i) => {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = f;
      gain.gain.setValueAtTime(0.0001, t + i * 0.22);
      gain.gain.exponentialRampToValueAtTime(0.2, t + i * 0.22 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + i * 0.22 + 0.2);
      osc.connect(gain).connect(audio.destination);
      osc.start(t + i * 0.22);
      osc.stop(t + i * 0.22 + 0.21);
    });
    return true;
  }

  function cue(group, ev) {
    const banner = $("#fall-banner");
    banner.dataset.group = group.key;
    banner.dataset.type = ev.type;
    const who = ev.track_id !== undefined && ev.track_id !== null ? `, person #${ev.track_id}` : "";
    $("#fall-banner-text").textContent = ev.type === "still_down"
      ? `Still down for ${duration(ev.time_down_s)}: camera ${ev.source}${who}`
      : `Fall detected: camera ${ev.source}${who} at ${clock(ev.at)}`;
    banner.hidden = false;
    banner.dataset.cues = String(Number(banner.dataset.cues || 0) + 1);
    if (beep()) banner.dataset.beeps = String(Number(banner.dataset.beeps || 0) + 1);
    group.card.classList.remove("new");
    void group.card.offsetWidth; // restart the flash animation
    group.card.classList.add("new");
    document.body.classList.add("alarm");
  }

  function hideBanner() {
    $("#fall-banner").hidden = true;
    document.body.classList.remove("alarm");
  }

  // ---------------------------------------------------------------- sign-in, settings, add camera

  function openKeyDialog(message) {
    const dlg = $("#key-dialog");
    $("#key-input").value = "";
    $("#key-input").required = !state.key;
    $("#key-input").placeholder = state.key ? "unchanged" : "";
    $("#operator-input").value = state.operator;
    $("#sign-out-btn").hidden = !state.key;
    showError($("#key-error"), message || "");
    if (!dlg.open) dlg.showModal();
    $("#key-input").focus();
  }

  function onAuthError(err) {
    if (!$("#key-dialog").open) openKeyDialog(err.message);
    else showError($("#key-error"), err.message);
  }

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

  // ---------------------------------------------------------------- start

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
})();
