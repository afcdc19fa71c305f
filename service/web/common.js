// Operator page: what every part shares: storage keys, the page state, DOM and text helpers.

export const STORE = { key: "falldet.apiKey", operator: "falldet.operator", sound: "falldet.sound" };
export const EVENT_TYPES = new Set(["fall_alert", "still_down", "fall_cleared", "camera_offline", "camera_online"]);
export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
export const enc = encodeURIComponent;

export const state = {
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

export function clock(epochS) {
  if (typeof epochS !== "number" || !isFinite(epochS)) return "";
  return new Date(epochS * 1000).toLocaleTimeString([], { hour12: false });
}

export function dateTime(epochS) {
  if (typeof epochS !== "number" || !isFinite(epochS)) return "";
  const d = new Date(epochS * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? clock(epochS) : `${d.toLocaleDateString()} ${clock(epochS)}`;
}

export function duration(s) {
  if (typeof s !== "number" || !isFinite(s)) return "";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function num(v, digits = 1) {
  return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "–";
}

export function showError(el, text) {
  el.textContent = text || "";
  el.hidden = !text;
}

// The camera's picture, or a dark frame saying why there is none (live view and zone editor).
export function drawBackdrop(ctx, img, W, H, unit, message, centred) {
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
