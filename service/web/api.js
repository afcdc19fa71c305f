// Operator page: the service's API (fetch with the key), WebSockets that reconnect, and the key
// itself (the sign-in dialog a refused key opens).
// The key goes out as the X-API-Key header on HTTP and as a WebSocket subprotocol, never in a URL.

import { $, state, showError } from "./common.js";

export class AuthError extends Error {}

function apiUrl(path, params) {
  const url = new URL(path, document.baseURI);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
  }
  return url;
}

export function wsUrl(path, params) {
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
export async function api(path, { method = "GET", body, params, raw = false } = {}) {
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

// Reconnects with exponential backoff and jitter. The attempt count resets only when a message
// arrives, so a server that accepts and then closes at once does not make a tight loop.
export class ReconnectingSocket {
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

export function checkAuthSoon() {
  const now = Date.now();
  if (now - lastAuthCheck < 10000) return;
  lastAuthCheck = now;
  api("v1/streams").catch(() => {});
}

export function openKeyDialog(message) {
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
