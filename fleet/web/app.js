// The fleet dashboard: overview, device page with charts, rollout page. Hash routes (#/, #/device/ID,
// #/rollout/ID); every view redraws itself from the API every 2 s without reloading the page.
"use strict";

const REFRESH_MS = 2000;
const view = document.getElementById("view");
const summaryLine = document.getElementById("summary");
const statusLine = document.getElementById("status");
const login = document.getElementById("login");
const SERIES_COLORS = ["#0969da", "#bf3989", "#1a7f37", "#9a6700"];

let timer = null;
let generation = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function cell(text, className) {
  return el("td", { class: className || "", text: text });
}

function link(href, text) {
  return el("a", { href: href, text: text });
}

function modelText(ref) {
  return ref ? `${ref.name} ${ref.version}` : "–";
}

function number(value, digits, unit) {
  if (value === null || value === undefined) return "–";
  return `${Number(value).toFixed(digits)}${unit || ""}`;
}

function bytes(value) {
  if (value === null || value === undefined) return "–";
  const mib = value / (1024 * 1024);
  return mib >= 1024 ? `${(mib / 1024).toFixed(2)} GiB` : `${mib.toFixed(1)} MiB`;
}

function ago(iso) {
  if (!iso) return "–";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = localStorage.getItem("edgefleet-token");
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { headers: headers });
  if (response.status === 401 || response.status === 403) throw new Unauthorized(`HTTP ${response.status}`);
  if (!response.ok) throw new Error(`HTTP ${response.status} on ${path}`);
  return response.json();
}

function table(id, headers, rows, empty) {
  const head = el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { class: h.endsWith(" ") ? "num" : "", text: h.trim() }))));
  const body = el("tbody");
  if (rows.length === 0) {
    const td = cell(empty);
    td.colSpan = headers.length;
    body.append(el("tr", { class: "empty" }, td));
  } else {
    body.append(...rows);
  }
  return el("table", { id: id }, head, body);
}

function card(label, value, id) {
  return el("div", { class: "card", id: id }, el("div", { class: "muted", text: label }), el("div", { class: "big", text: String(value) }));
}

// ------------------------------------------------------------------ overview

function sameModel(a, b) {
  return !!a && !!b && a.name === b.name && a.version === b.version;
}

function deviceRow(device) {
  const t = device.telemetry || {};
  // "Behind" compares what the device committed (not what it serves on probation) with its desired
  // model; a device serving something it has not committed yet is "on probation".
  const committed = device.committed || null;
  const behind = device.desired && !sameModel(committed, device.desired);
  const probation = device.model && !sameModel(device.model, committed);
  const tr = el("tr", {},
    el("td", {}, link(`#/device/${encodeURIComponent(device.device_id)}`, device.device_id)),
    // A provisioned device that never reported, or a revoked one, shows its state instead.
    device.state && device.state !== "active"
      ? cell(device.state, `state ${device.state}`)
      : cell(device.presence, `presence ${device.presence}`),
    cell(modelText(device.model) + (probation ? " (on probation)" : ""),
      [behind ? "behind" : "", probation ? "probation" : ""].join(" ").trim()),
    cell(modelText(device.desired)),
    cell(device.update_state || "–"),
    cell(number(t.latency_p50, 1), "num"),
    cell(number(t.latency_p95, 1), "num"),
    cell(number(t.latency_p99, 1), "num"),
    cell(number(t.cpu_percent, 0, " %"), "num"),
    cell(bytes(t.process_rss_bytes), "num"),
    cell(number(t.memory_used_percent, 0, " %"), "num"),
    cell(ago(device.last_seen)),
  );
  tr.dataset.deviceId = device.device_id;
  tr.lastChild.title = device.last_seen;
  return tr;
}

function rolloutRow(r) {
  return el("tr", {},
    el("td", {}, link(`#/rollout/${r.id}`, `#${r.id}`)),
    cell(`${r.name} ${r.version}`),
    cell(r.state, r.state === "rolled_back" || r.state === "halted" ? "fail" : r.state === "completed" ? "ok" : ""),
    cell(`${r.wave + 1} / ${r.waves.length}`),
    cell(`${r.devices_on_target} / ${r.devices_assigned} / ${r.devices_total}`, "num"),
    cell(r.reason || "–"),
  );
}

function alertRow(a) {
  return el("tr", {},
    cell(a.severity, a.severity),
    cell(a.rule),
    a.device_id ? el("td", {}, link(`#/device/${encodeURIComponent(a.device_id)}`, a.device_id)) : cell("–"),
    cell(a.message),
    cell(ago(a.opened_at)),
  );
}

function closedAlertRow(a) {
  const row = alertRow(a);
  row.append(cell(ago(a.resolved_at)));
  return row;
}

async function overview() {
  const [summary, devices, rollouts, alerts, closed] = await Promise.all([
    api("/api/v1/summary"), api("/api/v1/devices"), api("/api/v1/rollouts"), api("/api/v1/alerts?state=open"),
    api("/api/v1/alerts?state=closed&limit=10"),
  ]);
  summaryLine.textContent = `${devices.length} device(s), ${summary.online} online`;
  const models = Object.entries(summary.models).map(([model, count]) => el("tr", {}, cell(model), cell(String(count), "num")));
  return [
    el("div", { class: "cards" },
      card("devices", summary.devices, "card-devices"),
      card("online", summary.online, "card-online"),
      card("offline", summary.offline, "card-offline"),
      card("open alerts", summary.open_alerts, "card-alerts"),
      card("active rollouts", summary.active_rollouts, "card-rollouts")),
    el("h2", { text: "Devices" }),
    table("devices", ["Device", "State", "Model", "Desired", "Update", "p50 ms ", "p95 ms ", "p99 ms ", "CPU ", "RSS ", "Memory ", "Last seen"],
      devices.map(deviceRow), "No device has reported yet."),
    el("h2", { text: "Model versions in the fleet" }),
    table("models", ["Model", "Devices "], models, "No device runs a model yet."),
    el("h2", { text: "Rollouts" }),
    table("rollouts", ["Rollout", "Model", "State", "Wave", "On / assigned / total ", "Why"], rollouts.map(rolloutRow), "No rollout yet."),
    el("h2", { text: "Open alerts" }),
    table("alerts", ["Severity", "Rule", "Device", "Message", "Opened"], alerts.map(alertRow), "No open alert."),
    el("h2", { text: "Recent alerts (resolved)" }),
    table("recent-alerts", ["Severity", "Rule", "Device", "Message", "Opened", "Resolved"], closed.map(closedAlertRow),
      "No alert resolved yet."),
  ];
}

// ------------------------------------------------------------------ audit log (operator or admin)

async function auditPage() {
  let entries;
  try {
    entries = await api("/api/v1/audit?limit=100");
  } catch (error) {
    if (!(error instanceof Unauthorized)) throw error;
    return [el("h2", { text: "Audit log" }), el("p", { class: "muted", text: "The audit log needs an operator or admin token." })];
  }
  const rows = entries.map((e) => el("tr", {},
    cell(new Date(e.at).toLocaleString()), cell(`${e.actor} (${e.role || "–"})`), cell(e.action), cell(e.target || "–"),
    cell(e.client || "–")));
  return [el("h2", { text: "Audit log (newest 100)" }),
    table("audit", ["When", "Who", "Action", "Target", "From"], rows, "Nothing recorded yet.")];
}

// ------------------------------------------------------------------ device page and charts

function chart(title, t, lines, unit) {
  const width = 360, height = 140, left = 34, bottom = 16, top = 6;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const times = t.map((iso) => Date.parse(iso));
  const values = lines.flatMap((l) => l.values).filter((v) => v !== null && v !== undefined);
  const box = el("div", { class: "chart", "data-chart": title }, el("h3", { text: `${title}${unit ? ` (${unit})` : ""}` }));
  if (times.length === 0 || values.length === 0) {
    box.append(el("p", { class: "muted", text: "no data yet" }));
    return box;
  }
  let lo = Math.min(0, ...values), hi = Math.max(...values);
  if (hi === lo) hi = lo + 1;
  const t0 = times[0], t1 = Math.max(times[times.length - 1], t0 + 1);
  const x = (ms) => left + ((ms - t0) / (t1 - t0)) * (width - left - 4);
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (height - top - bottom);
  const axis = document.createElementNS(ns, "path");
  axis.setAttribute("class", "axis");
  axis.setAttribute("d", `M${left},${top} V${height - bottom} H${width}`);
  svg.append(axis);
  for (const [value, anchor] of [[hi, top + 8], [lo, height - bottom]]) {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", "2");
    label.setAttribute("y", String(anchor));
    label.textContent = Number(value).toPrecision(3);
    svg.append(label);
  }
  const when = document.createElementNS(ns, "text");
  when.setAttribute("x", String(left));
  when.setAttribute("y", String(height - 3));
  when.textContent = `${new Date(t0).toLocaleTimeString()} – ${new Date(t1).toLocaleTimeString()}`;
  svg.append(when);
  lines.forEach((line, index) => {
    let d = "";
    let pen = "M";
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = "M"; return; }
      d += `${pen}${x(times[i]).toFixed(1)},${y(v).toFixed(1)} `;
      pen = "L";
    });
    const path = document.createElementNS(ns, "path");
    path.setAttribute("class", "line");
    path.setAttribute("stroke", SERIES_COLORS[index % SERIES_COLORS.length]);
    path.setAttribute("d", d.trim());
    const label = document.createElementNS(ns, "title");
    label.textContent = line.name;
    path.append(label);
    svg.append(path);
  });
  box.append(svg);
  if (lines.length > 1) {
    box.append(el("div", { class: "muted" }, ...lines.map((l, i) => el("span", { style: `color:${SERIES_COLORS[i]}; margin-right:1rem`, text: `— ${l.name}` }))));
  }
  return box;
}

async function devicePage(id) {
  const [device, data, events] = await Promise.all([
    api(`/api/v1/devices/${encodeURIComponent(id)}`),
    api(`/api/v1/devices/${encodeURIComponent(id)}/series?hours=6&points=360`),
    api(`/api/v1/devices/${encodeURIComponent(id)}/events?limit=20`),
  ]);
  summaryLine.textContent = `device ${id}`;
  const s = data.series;
  const events_rows = events.map((e) => el("tr", {}, cell(ago(e.ts)), cell(e.state, e.ok ? "" : "fail"), cell(modelText(e.target)), cell(e.reason || "")));
  return [
    el("h2", { text: `Device ${device.device_id}` }),
    el("p", {},
      el("span", { class: `presence ${device.presence}`, text: device.presence }), " · ",
      `serves ${modelText(device.model)} · committed ${modelText(device.committed)}` +
        `${device.model && !sameModel(device.model, device.committed) ? " (on probation)" : ""} · ` +
        `desired ${modelText(device.desired)} · update ${device.update_state || "–"} · `,
      `group ${device.group || "–"} · tags ${device.tags.join(", ") || "–"} · last seen ${ago(device.last_seen)}`),
    el("div", { class: "charts", id: "charts" },
      chart("Latency", s.t, [{ name: "p50", values: s.latency_p50 }, { name: "p95", values: s.latency_p95 }, { name: "p99", values: s.latency_p99 }], "ms"),
      chart("Throughput", s.t, [{ name: "requests/s", values: s.throughput_rps }], "req/s"),
      chart("Errors", s.t, [{ name: "error rate", values: s.error_rate }], "share"),
      chart("CPU", s.t, [{ name: "cpu", values: s.cpu_percent }], "%"),
      chart("Memory", s.t, [{ name: "system", values: s.memory_used_percent }], "%"),
      chart("Process RSS", s.t, [{ name: "rss", values: s.process_rss_mib }], "MiB"),
      chart("Temperature", s.t, [{ name: "temperature", values: s.temperature_c }], "°C"),
      chart("Prediction health", s.t, [{ name: "drift PSI", values: s.drift_psi }, { name: "low-confidence share", values: s.low_confidence_share }], "")),
    el("h2", { text: "Update events" }),
    table("events", ["When", "State", "Target", "Reason"], events_rows, "No update event yet."),
  ];
}

// ------------------------------------------------------------------ rollout page

async function rolloutPage(id) {
  const r = await api(`/api/v1/rollouts/${encodeURIComponent(id)}`);
  summaryLine.textContent = `rollout #${r.id}`;
  const share = r.devices_total ? (100 * r.devices_on_target) / r.devices_total : 0;
  const waves = r.waves.map((size, i) => el("tr", {},
    cell(`wave ${i + 1}`), cell(String(size), "num"),
    cell(i < r.wave ? "passed" : i === r.wave ? r.state : "waiting", i < r.wave ? "ok" : "")));
  const gates = (r.last_gates || []).map((g) => el("tr", {},
    cell(g.ok ? "ok" : "FAIL", g.ok ? "ok" : "fail"), cell(g.gate),
    cell(g.value === null ? "–" : Number(g.value).toPrecision(3), "num"), cell(String(g.limit), "num"), cell(g.detail)));
  const states = Object.entries(r.device_states || {}).map(([state, n]) => `${n} ${state}`).join(", ");
  const skipped = (r.skipped || []).map((s) => el("tr", {},
    el("td", {}, link(`#/device/${encodeURIComponent(s.device_id)}`, s.device_id)), cell(s.runtime || "–"), cell(s.reason)));
  const bar = el("span", { style: `width:${share.toFixed(0)}%` });
  return [
    el("h2", { text: `Rollout #${r.id}: ${r.name} ${r.version}` }),
    el("p", { id: "rollout-state" }, el("strong", { text: r.state }), ` · wave ${r.wave + 1} of ${r.waves.length} · `,
      el("span", { class: "bar" }, bar), ` ${r.devices_on_target} of ${r.devices_total} devices on the new model`),
    el("p", { class: "muted", text: r.reason || "" }),
    el("p", { id: "rollout-devices", text: `devices: ${states || "–"}` +
      (r.deadline_at ? ` · offline devices skipped from ${new Date(r.deadline_at).toLocaleString()}` : "") }),
    el("h2", { text: "Waves (cumulative devices)" }),
    table("waves", ["Wave", "Devices ", "State"], waves, ""),
    el("h2", { text: "Last gate evaluation" }),
    table("gates", ["", "Gate", "Value ", "Limit ", "Detail"], gates, "Not judged yet: the first wave is soaking."),
    el("h2", { text: "Skipped: their runtime cannot load the model" }),
    table("skipped", ["Device", "Runtime", "Reason"], skipped, "None: every targeted device can load it."),
    el("p", { class: "muted", text: `soak ${r.gates.soak_s} s per wave · on failure: ${r.gates.on_failure} · started ${ago(r.created_at)} by ${r.created_by || "–"}` }),
  ];
}

// ------------------------------------------------------------------ router and refresh loop

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const device = hash.match(/^\/device\/(.+)$/);
  if (device) return () => devicePage(decodeURIComponent(device[1]));
  const rollout = hash.match(/^\/rollout\/(\d+)$/);
  if (rollout) return () => rolloutPage(rollout[1]);
  if (hash === "/audit") return auditPage;
  return overview;
}

async function refresh(mine) {
  try {
    const nodes = await route()();
    if (mine !== generation) return;  // the route changed while loading
    view.replaceChildren(...nodes);
    login.hidden = true;
    statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
    statusLine.className = "muted";
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof Unauthorized) login.hidden = false;
    statusLine.textContent = `cannot load (${error.message}); retrying`;
    statusLine.className = "error";
  } finally {
    if (mine === generation) timer = setTimeout(() => refresh(mine), REFRESH_MS);
  }
}

function restart() {
  clearTimeout(timer);
  generation += 1;
  refresh(generation);
}

login.addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("edgefleet-token", document.getElementById("token").value.trim());
  restart();
});
window.addEventListener("hashchange", restart);
restart();  // polls /api/v1/devices and friends every REFRESH_MS (2000 ms)
