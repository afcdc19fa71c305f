// Operator page: the alarm: the red banner, the blinking border and the beep of a new fall.

import { $, state, clock, duration } from "./common.js";

let audio = null;

export function unlockAudio() { // browsers allow sound only after a user gesture
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

export function cue(group, ev) {
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

export function hideBanner() {
  $("#fall-banner").hidden = true;
  document.body.classList.remove("alarm");
}
