// Operator page: bed and ignore zones: drawn over a camera's picture, and the zone editor.

import { $, enc, showError, drawBackdrop } from "./common.js";
import { AuthError, api } from "./api.js";

const ZONE_COLORS = { bed: "#64d2ff", ignore: "#aeaeb2" };

// Zones are polygons in fractions of the picture (0..1), drawn under the boxes.
export function drawZones(ctx, zones, W, H, unit, open) {
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

export const zoneEditor = { tile: null, zones: [], points: [] };

export function openZoneEditor(tile) {
  zoneEditor.tile = tile;
  zoneEditor.zones = ((tile.status && tile.status.zones) || []).map((z) => ({ ...z, points: z.points.map((p) => [...p]) }));
  zoneEditor.points = [];
  $("#zones-camera").textContent = tile.id;
  $("#zone-name").value = "";
  showError($("#zones-error"), "");
  renderZoneEditor();
  $("#zones-dialog").showModal();
}

export function renderZoneEditor() {
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

export function zoneCanvasClick(event) {
  const canvas = $("#zones-canvas");
  const rect = canvas.getBoundingClientRect();
  const round = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;
  zoneEditor.points.push([round((event.clientX - rect.left) / rect.width), round((event.clientY - rect.top) / rect.height)]);
  renderZoneEditor();
}

export function closeZoneShape() {
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

export async function saveZones(event) {
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
