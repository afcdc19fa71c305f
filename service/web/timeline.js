// Operator page: the timeline of the selected camera: one row per person, one bar per action
// segment (pieces inside a bed period are "in bed"), click a bar for when and where.

import { $, enc, state, clock, duration, num } from "./common.js";
import { AuthError, api } from "./api.js";

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
    if (segs.length) out.push({ id: t.track_id ?? t.id, open: t.open !== false, segments: segs, bed: bedPeriods(t) });
  }
  const now = Math.max(latest, ...[data?.now_s, data?.pts_s].filter((v) => typeof v === "number"));
  out.sort((a, b) => b.segments[b.segments.length - 1].end - a.segments[a.segments.length - 1].end);
  // wall clock of a pts time, when the service says which wall-clock time its "now" is
  const wall = typeof data?.now_at === "number" && typeof data?.now_s === "number"
    ? (t) => data.now_at - (data.now_s - t) : null;
  return { tracks: out, now, earliest, wall };
}

// A track's bed periods (the service's `bed`: zone, start_s, end_s, open), times as numbers; one
// still open lasts until the person is seen out of bed.
function bedPeriods(t) {
  const out = [];
  for (const b of (t && Array.isArray(t.bed) ? t.bed : [])) {
    const start = b.start_s ?? b.start;
    const end = b.open ? Infinity : (b.end_s ?? b.end ?? start);
    if (typeof start === "number" && typeof end === "number") out.push({ zone: b.zone || "bed", start, end });
  }
  return out.sort((a, b) => a.start - b.start);
}

// A segment cut where the person got into or out of bed: [{start, end, bed: zone name or null}].
// In bed the fall rules do not see the model's pose (a person lying in bed is no fall), so
// neither does the operator: those pieces are drawn "in bed".
function splitByBed(start, end, periods) {
  if (!periods.length) return [{ start, end, bed: null }];
  if (end <= start) {
    const b = periods.find((p) => p.start <= start && start <= p.end);
    return [{ start, end, bed: b ? b.zone : null }];
  }
  const pieces = [];
  let t = start;
  for (const b of periods) {
    if (b.end <= t || b.start >= end) continue;
    if (b.start > t) pieces.push({ start: t, end: b.start, bed: null });
    const e = Math.min(end, b.end);
    pieces.push({ start: Math.max(t, b.start), end: e, bed: b.zone });
    t = e;
    if (t >= end) break;
  }
  if (t < end) pieces.push({ start: t, end, bed: null });
  return pieces;
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

export function renderTimeline(data) {
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
      const where = boxOf(s);
      for (const piece of splitByBed(s.start, endOf(t, s), t.bed)) {
        const xa = x(piece.start), xb = x(piece.end);
        const attrs = {
          x: xa, y: y + 3, width: Math.max(2, xb - xa), height: row - 6, rx: 3,
          class: piece.bed ? "seg in-bed" : `seg action-${s.action}`, "data-action": s.action, "data-track": t.id,
        };
        if (piece.bed) attrs["data-in-bed"] = piece.bed;
        const rect = svg("rect", attrs, root);
        const whole = piece.start === s.start && piece.end >= s.end;
        const from = piece.start, to = Math.min(piece.end, s.end);
        const when = tl.wall ? `${clock(tl.wall(from))}–${clock(tl.wall(to))}` : `${num(from)}–${num(to)} s`;
        const what = piece.bed ? `in bed (${piece.bed})` : s.action;
        const desc = `person #${t.id}: ${what} ${when} (${duration(to - from)})` +
          (piece.bed ? ` (the model saw: ${s.action})` : "") +
          (whole && s.start_frame !== undefined ? `, frames ${s.start_frame}–${s.end_frame}` : "") +
          (where ? `, at x ${Math.round(where[0])}–${Math.round(where[2])}, y ${Math.round(where[1])}–${Math.round(where[3])} px` : "");
        svg("title", {}, rect).textContent = desc;
        rect.addEventListener("click", () => {
          $("#timeline-detail").textContent = desc;
          const tile = state.cameras.get(state.selected);
          if (where && tile) tile.showSegment(where);
        });
      }
    }
  });
}

export async function refreshTimeline() {
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
