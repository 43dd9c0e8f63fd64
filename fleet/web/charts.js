// SVG line charts over a fixed time range, with dashed vertical markers where the model changed.
"use strict";

const SERIES_COLORS = ["#0969da", "#bf3989", "#1a7f37", "#9a6700"];
const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeLabel(ms, spanMs) {
  const date = new Date(ms);
  return spanMs > 86400e3 ? date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })
    : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// range: {from, to} in ms; markers: [{t (ms), kind ("commit" | "rollback"), label}].
function chart(title, t, lines, unit, range, markers) {
  const width = 360, height = 140, left = 34, bottom = 16, top = 6;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  const times = t.map((iso) => Date.parse(iso));
  const values = lines.flatMap((l) => l.values).filter((v) => v !== null && v !== undefined);
  const box = el("div", { class: "chart", "data-chart": title }, el("h3", { text: `${title}${unit ? ` (${unit})` : ""}` }));
  const t0 = range.from, t1 = Math.max(range.to, range.from + 1);
  const x = (ms) => left + ((ms - t0) / (t1 - t0)) * (width - left - 4);
  let lo = Math.min(0, ...values), hi = values.length ? Math.max(...values) : 1;
  if (hi === lo) hi = lo + 1;
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (height - top - bottom);
  svg.append(svgEl("path", { class: "axis", d: `M${left},${top} V${height - bottom} H${width}` }));
  for (const [value, anchor] of [[hi, top + 8], [lo, height - bottom]]) {
    svg.append(svgEl("text", { x: 2, y: anchor }, Number(value).toPrecision(3)));
  }
  svg.append(svgEl("text", { x: left, y: height - 3 }, `${timeLabel(t0, t1 - t0)} – ${timeLabel(t1, t1 - t0)}`));
  for (const marker of markers) {
    if (marker.t < t0 || marker.t > t1) continue;
    const at = x(marker.t).toFixed(1);
    const line = svgEl("path", { class: `marker ${marker.kind}`, d: `M${at},${top} V${height - bottom}`, "data-t": new Date(marker.t).toISOString() });
    line.append(svgEl("title", {}, marker.label));
    svg.append(line);
  }
  lines.forEach((line, index) => {
    let d = "";
    let pen = "M";
    line.values.forEach((v, i) => {
      if (v === null || v === undefined || times[i] < t0) { pen = "M"; return; }
      d += `${pen}${x(times[i]).toFixed(1)},${y(v).toFixed(1)} `;
      pen = "L";
    });
    if (!d) return;
    const path = svgEl("path", { class: "line", stroke: SERIES_COLORS[index % SERIES_COLORS.length], d: d.trim() });
    path.append(svgEl("title", {}, line.name));
    svg.append(path);
  });
  box.append(svg);
  if (values.length === 0) box.append(el("p", { class: "muted", text: "no data in this range" }));
  if (lines.length > 1) {
    box.append(el("div", { class: "muted" }, ...lines.map((l, i) => el("span", { style: `color:${SERIES_COLORS[i]}; margin-right:1rem`, text: `— ${l.name}` }))));
  }
  return box;
}

// Commit and rollback events are where the model a device runs changed.
function modelMarkers(events) {
  return events
    .filter((e) => e.state === "commit" || e.state === "rollback")
    .map((e) => ({
      t: Date.parse(e.ts),
      kind: e.state,
      label: e.state === "commit" ? `${modelText(e.target)} committed` : `rolled back from ${modelText(e.target)}`,
    }));
}
