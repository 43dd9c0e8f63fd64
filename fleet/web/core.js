// Shared by the dashboard's scripts: DOM building (text nodes only: nothing from the API is ever
// parsed as HTML), formatting, and the API client that sends the session's operator token.
"use strict";

const TOKEN_KEY = "edgefleet-token";
// Earlier pages kept the token in localStorage; it now lives only as long as the tab.
localStorage.removeItem(TOKEN_KEY);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
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

// ------------------------------------------------------------------ API client

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;  // the API's own words, shown as they are
  }
}

// The API wants `Authorization: Bearer <token>` (fleet/api/security.py).
async function request(method, path, body, withHeaders) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method: method, headers: headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.ok) {
    const payload = response.status === 204 ? null : await response.json();
    return withHeaders ? { body: payload, headers: response.headers } : payload;
  }
  let detail = `HTTP ${response.status} on ${path}`;
  try {
    const payload = await response.json();
    if (payload && typeof payload.detail === "string") detail = payload.detail;
  } catch (_) {
    // not JSON (a proxy's page): keep the status line
  }
  if (response.status === 401) throw new Unauthorized(detail);
  throw new ApiError(response.status, detail);
}

function api(path) {
  return request("GET", path);
}

// A paged list: its rows, X-Total-Count and X-Next-Cursor (null on the last page).
async function apiPage(path) {
  const answer = await request("GET", path, undefined, true);
  return { rows: answer.body, total: Number(answer.headers.get("X-Total-Count")), next: answer.headers.get("X-Next-Cursor") };
}

// Who the token belongs to; null until known. An open API (no tokens file) answers as admin.
const session = { name: null, role: null, open: false };

function canAct() {
  return session.role === "operator" || session.role === "admin";
}
