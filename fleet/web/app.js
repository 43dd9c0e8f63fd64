// The device table: fetches /api/v1/devices every 2 s and redraws the rows in place (no reload).
"use strict";

const REFRESH_MS = 2000;
const tbody = document.querySelector("#devices tbody");
const summary = document.getElementById("summary");
const statusLine = document.getElementById("status");

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
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
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

function row(device) {
  const tr = document.createElement("tr");
  tr.dataset.deviceId = device.device_id;
  const t = device.telemetry || {};
  const behind = device.desired && (!device.model ||
    device.model.name !== device.desired.name || device.model.version !== device.desired.version);
  tr.append(
    cell(device.device_id),
    cell(device.presence, `presence ${device.presence}`),
    cell(modelText(device.model), behind ? "behind" : ""),
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
  tr.lastChild.title = device.last_seen;
  return tr;
}

function render(devices) {
  if (devices.length === 0) {
    tbody.replaceChildren();
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell("No device has reported yet.");
    td.colSpan = 12;
    tr.append(td);
    tbody.append(tr);
  } else {
    tbody.replaceChildren(...devices.map(row));
  }
  const online = devices.filter((d) => d.presence === "online").length;
  summary.textContent = `${devices.length} device(s), ${online} online`;
}

async function refresh() {
  try {
    const response = await fetch("/api/v1/devices", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
    statusLine.className = "muted";
  } catch (error) {
    statusLine.textContent = `cannot reach the fleet API (${error.message}); retrying`;
    statusLine.className = "error";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
