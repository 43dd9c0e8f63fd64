// The fleet dashboard: overview, device page with charts, rollout page. Hash routes (#/, #/device/ID,
// #/rollout/ID). Each page builds its skeleton once (forms, filters and the range selector keep what
// the operator typed) and refills its live parts from the API every 2 s without reloading.
"use strict";

const REFRESH_MS = 2000;
const view = document.getElementById("view");
const summaryLine = document.getElementById("summary");
const statusLine = document.getElementById("status");
const sessionLine = document.getElementById("session");
const login = document.getElementById("login");
const loginError = document.getElementById("login-error");
const RANGES = [["1 h", 1], ["6 h", 6], ["24 h", 24], ["7 d", 168]];

let timer = null;
let generation = 0;
let inFlight = 0;      // the generation whose refresh is running, 0 when none
let again = false;     // an action asked for a refresh while one was running
let page = null;       // the current route's page, built after the session is known
let chartHours = 6;    // the device charts' range, kept while moving between devices

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
    cell(device.group || "–"),
    cell(number(t.latency_p50, 1), "num"),
    cell(number(t.latency_p95, 1), "num"),
    cell(number(t.latency_p99, 1), "num"),
    cell(number(t.cpu_percent, 0, " %"), "num"),
    cell(bytes(t.process_rss_bytes), "num"),
    cell(number(t.memory_used_percent, 0, " %"), "num"),
    cell(ago(device.last_seen)),
  );
  tr.dataset.deviceId = device.device_id;
  if (device.last_seen) tr.lastChild.title = device.last_seen;
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

// ------------------------------------------------------------------ audit log (operator or admin)

function auditPage() {
  const box = el("div", { id: "audit-box" });
  return {
    nodes: [el("h2", { text: "Audit log (newest 100)" }), box],
    async load() {
      let entries = null;
      try {
        entries = await api("/api/v1/audit?limit=100");
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 403)) throw error;  // a viewer
      }
      return () => {
        summaryLine.textContent = "audit log";
        if (entries === null) {
          box.replaceChildren(el("p", { class: "muted", text: "The audit log needs an operator or admin token." }));
          return;
        }
        const rows = entries.map((e) => el("tr", {},
          cell(new Date(e.at).toLocaleString()), cell(`${e.actor} (${e.role || "–"})`), cell(e.action), cell(e.target || "–"),
          cell(e.client || "–")));
        box.replaceChildren(table("audit", ["When", "Who", "Action", "Target", "From"], rows, "Nothing recorded yet."));
      };
    },
  };
}

function overviewPage() {
  const cards = el("div", { class: "cards" });
  const devicesBox = el("div", { id: "devices-box" });
  const shown = el("p", { class: "muted", id: "filter-count" });
  const live = { models: el("div"), rollouts: el("div"), alerts: el("div"), closed: el("div") };
  // A filter change starts again from the first page; paging keeps the filter.
  const filter = deviceFilter(() => { pager.reset(); refreshSoon(); });
  const pager = devicePager(refreshSoon);
  return {
    nodes: [cards, canAct() ? rolloutForm() : null, el("h2", { text: "Devices" }), filter.node, shown, devicesBox,
      pager.node, el("h2", { text: "Model versions in the fleet" }), live.models, el("h2", { text: "Rollouts" }),
      live.rollouts, el("h2", { text: "Open alerts" }), live.alerts, el("h2", { text: "Recent alerts (resolved)" }), live.closed],
    async load() {
      const filtered = filter.params().toString() !== new URLSearchParams({ sort: "device_id" }).toString();
      const devicesPage = apiPage(pager.path(filter.params())).catch((error) => {
        if (!(error instanceof ApiError && error.status === 400)) throw error;
        pager.restart();  // a cursor from before a change the fleet refuses: the first page again
        return apiPage(pager.path(filter.params()));
      });
      const [summary, labels, page, rollouts, alerts, closed] = await Promise.all([
        api("/api/v1/summary"), api("/api/v1/labels"), devicesPage, api("/api/v1/rollouts"),
        api("/api/v1/alerts?state=open"), api("/api/v1/alerts?state=closed&limit=10"),
      ]);
      return () => {
        summaryLine.textContent = `${summary.devices} device(s), ${summary.online} online`;
        cards.replaceChildren(
          card("devices", summary.devices, "card-devices"), card("online", summary.online, "card-online"),
          card("offline", summary.offline, "card-offline"), card("open alerts", summary.open_alerts, "card-alerts"),
          card("active rollouts", summary.active_rollouts, "card-rollouts"));
        filter.learn(labels, Object.keys(summary.models));
        const first = pager.shown(page.next);
        const last = first + page.rows.length - 1;
        shown.textContent = page.rows.length
          ? `Showing ${first} to ${last} of ${page.total} ${filtered ? "matching " : ""}device(s).`
          : `Showing 0 of ${page.total} ${filtered ? "matching " : ""}device(s).`;
        devicesBox.replaceChildren(table("devices", ["Device", "State", "Model", "Desired", "Update", "Group", "p50 ms ", "p95 ms ", "p99 ms ", "CPU ", "RSS ", "Memory ", "Last seen"],
          page.rows.map(deviceRow), filtered ? "No device matches the filter." : "No device has reported yet."));
        const models = Object.entries(summary.models).map(([model, count]) => el("tr", {}, cell(model), cell(String(count), "num")));
        live.models.replaceChildren(table("models", ["Model", "Devices "], models, "No device runs a model yet."));
        live.rollouts.replaceChildren(table("rollouts", ["Rollout", "Model", "State", "Wave", "On / assigned / total ", "Why"], rollouts.map(rolloutRow), "No rollout yet."));
        live.alerts.replaceChildren(table("alerts", ["Severity", "Rule", "Device", "Message", "Opened"], alerts.map(alertRow), "No open alert."));
        live.closed.replaceChildren(table("recent-alerts", ["Severity", "Rule", "Device", "Message", "Opened", "Resolved"],
          closed.map(closedAlertRow), "No alert resolved yet."));
      };
    },
  };
}

// ------------------------------------------------------------------ device page

function rangeBar() {
  const buttons = RANGES.map(([label, hours]) => {
    const button = el("button", { type: "button", "data-hours": String(hours), "aria-pressed": String(hours === chartHours), text: label });
    button.addEventListener("click", () => {
      chartHours = hours;
      for (const b of buttons) b.setAttribute("aria-pressed", String(b === button));
      refreshSoon();
    });
    return button;
  });
  return el("div", { class: "range", id: "range", role: "group", "aria-label": "chart time range" },
    el("span", { class: "muted", text: "Charts over the last" }), ...buttons,
    el("span", { class: "legend" }, el("span", { class: "ok", text: "┆ model committed" }), " ",
      el("span", { class: "fail", text: "┆ rolled back" })));
}

function devicePage(id) {
  const info = el("div", { id: "device-info" });
  const charts = el("div", { class: "charts", id: "charts" });
  const events = el("div");
  return {
    nodes: [info, canAct() ? deployForm(id) : null, canAct() ? remotePanel(id) : null, el("h2", { text: "Charts" }), rangeBar(), charts,
      el("h2", { text: "Update events" }), events],
    async load() {
      const path = `/api/v1/devices/${encodeURIComponent(id)}`;
      const hours = chartHours;
      const [device, data, history] = await Promise.all([
        api(path), api(`${path}/series?hours=${hours}&points=360`), api(`${path}/events?limit=500`),
      ]);
      return () => {
        summaryLine.textContent = `device ${id}`;
        info.replaceChildren(
          el("h2", { text: `Device ${device.device_id}` }),
          el("p", {},
            el("span", { class: `presence ${device.presence}`, text: device.presence }), " · ",
            `serves ${modelText(device.model)} · committed ${modelText(device.committed)}` +
              `${device.model && !sameModel(device.model, device.committed) ? " (on probation)" : ""} · ` +
              `desired ${modelText(device.desired)} · update ${device.update_state || "–"} · `,
            `group ${device.group || "–"} · tags ${device.tags.join(", ") || "–"} · last seen ${ago(device.last_seen)}`),
          el("p", { id: "config-report", class: "muted", text: `remote config: ${reportText(device.config)}` }));
        const s = data.series;
        const range = { from: Date.parse(data.since), to: Date.parse(data.until) };
        const markers = modelMarkers(history);
        const draw = (title, lines, unit) => chart(title, s.t, lines, unit, range, markers);
        charts.replaceChildren(
          draw("Latency", [{ name: "p50", values: s.latency_p50 }, { name: "p95", values: s.latency_p95 }, { name: "p99", values: s.latency_p99 }], "ms"),
          draw("Throughput", [{ name: "requests/s", values: s.throughput_rps }], "req/s"),
          draw("Errors", [{ name: "error rate", values: s.error_rate }], "share"),
          draw("CPU", [{ name: "cpu", values: s.cpu_percent }], "%"),
          draw("Memory", [{ name: "system", values: s.memory_used_percent }], "%"),
          draw("Process RSS", [{ name: "rss", values: s.process_rss_mib }], "MiB"),
          draw("Temperature", [{ name: "temperature", values: s.temperature_c }], "°C"),
          draw("Prediction health", [{ name: "drift PSI", values: s.drift_psi }, { name: "low-confidence share", values: s.low_confidence_share }, { name: "out-of-range share", values: s.out_of_range_share }], ""),
          draw("Drift tests", [{ name: "input drift", values: s.input_drift }, { name: "output drift", values: s.output_drift }, { name: "stuck features", values: s.stuck_features }], "-log10 p"));
        const rows = history.slice(0, 20).map((e) => el("tr", {}, cell(ago(e.ts)), cell(e.state, e.ok ? "" : "fail"), cell(modelText(e.target)), cell(e.reason || "")));
        events.replaceChildren(table("events", ["When", "State", "Target", "Reason"], rows, "No update event yet."));
      };
    },
  };
}

// ------------------------------------------------------------------ rollout page

function rolloutPage(id) {
  const head = el("div", { id: "rollout-head" });
  const body = el("div");
  const actions = canAct() ? rolloutActions(id) : null;
  return {
    nodes: [head, actions ? actions.node : null, body],
    async load() {
      const r = await api(`/api/v1/rollouts/${encodeURIComponent(id)}`);
      return () => {
        summaryLine.textContent = `rollout #${r.id}`;
        if (actions) actions.update(r);
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
        head.replaceChildren(
          el("h2", { text: `Rollout #${r.id}: ${r.name} ${r.version}` }),
          el("p", { id: "rollout-state" }, el("strong", { text: r.state }), ` · wave ${r.wave + 1} of ${r.waves.length} · `,
            el("span", { class: "bar" }, el("span", { style: `width:${share.toFixed(0)}%` })),
            ` ${r.devices_on_target} of ${r.devices_total} devices on the new model`),
          el("p", { class: "muted", text: r.reason || "" }),
          el("p", { id: "rollout-devices", text: `devices: ${states || "–"}` +
            (r.deadline_at ? ` · offline devices skipped from ${new Date(r.deadline_at).toLocaleString()}` : "") }));
        body.replaceChildren(
          el("h2", { text: "Waves (cumulative devices)" }),
          table("waves", ["Wave", "Devices ", "State"], waves, ""),
          el("h2", { text: "Last gate evaluation" }),
          table("gates", ["", "Gate", "Value ", "Limit ", "Detail"], gates, "Not judged yet: the first wave is soaking."),
          el("h2", { text: "Skipped: their runtime cannot load the model" }),
          table("skipped", ["Device", "Runtime", "Reason"], skipped, "None: every targeted device can load it."),
          el("p", { class: "muted", text: `soak ${r.gates.soak_s} s per wave · on failure: ${r.gates.on_failure} · started ${ago(r.created_at)} by ${r.created_by || "–"}` }));
      };
    },
  };
}

// ------------------------------------------------------------------ session, router, refresh loop

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const device = hash.match(/^\/device\/(.+)$/);
  if (device) return devicePage(decodeURIComponent(device[1]));
  const rollout = hash.match(/^\/rollout\/(\d+)$/);
  if (rollout) return rolloutPage(rollout[1]);
  if (hash === "/audit") return auditPage();
  return overviewPage();
}

function showSession() {
  if (session.open) {
    sessionLine.replaceChildren(el("span", { class: "warning", id: "api-open", text: "API open: the fleet has no tokens, anyone who reaches it can act" }));
    return;
  }
  const out = el("button", { type: "button", id: "sign-out", text: "Sign out" });
  out.addEventListener("click", signOut);
  sessionLine.replaceChildren(el("span", { id: "whoami", text: `${session.name} (${session.role})` }), " ", out);
}

async function ensureSession() {
  if (session.role !== null) return;
  const me = await api("/api/v1/whoami");
  Object.assign(session, { name: me.name, role: me.role, open: me.open });
  login.hidden = true;
  loginError.textContent = "";
  showSession();
}

async function refresh(mine) {
  if (mine !== generation) return;
  inFlight = mine;
  try {
    await ensureSession();
    if (page === null) {
      page = route();
      view.replaceChildren(...page.nodes.filter((n) => n !== null));
    }
    const apply = await page.load();
    if (mine !== generation) return;  // the route or the session changed while loading
    apply();
    statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
    statusLine.className = "muted";
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof Unauthorized) {
      const hadToken = sessionStorage.getItem(TOKEN_KEY) !== null;
      Object.assign(session, { name: null, role: null, open: false });
      sessionLine.replaceChildren();
      page = null;
      view.replaceChildren();
      login.hidden = false;
      loginError.textContent = hadToken ? `The fleet refused the token: ${error.message}` : "";
      statusLine.textContent = "sign in to see the fleet";
      statusLine.className = "muted";
      clearTimeout(timer);  // nothing to poll until a token is given
      return;
    }
    statusLine.textContent = `cannot load (${error.message}); retrying`;
    statusLine.className = "error";
  } finally {
    if (inFlight === mine) inFlight = 0;
  }
  if (mine === generation) {
    clearTimeout(timer);
    timer = setTimeout(() => refresh(mine), again ? 0 : REFRESH_MS);
    again = false;
  }
}

// After an action or a range change: refresh now rather than in up to 2 s.
function refreshSoon() {
  if (inFlight === generation) {
    again = true;
    return;
  }
  clearTimeout(timer);
  timer = setTimeout(() => refresh(generation), 0);
}

function restart(resetSession) {
  clearTimeout(timer);
  generation += 1;
  again = false;
  page = null;
  if (resetSession) Object.assign(session, { name: null, role: null, open: false });
  refresh(generation);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  restart(true);
}

login.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  restart(true);
});
window.addEventListener("hashchange", () => restart(false));
restart(false);  // polls one page of /api/v1/devices and friends every REFRESH_MS (2000 ms)
