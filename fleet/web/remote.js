// Device page: the remote config (what the fleet wants, what the device reported) and a button
// that fetches the device's recent log over MQTT (the device redacts secrets before sending).
"use strict";

function configText(config) {
  if (!config.desired) return "agent.toml only";
  return `${JSON.stringify(config.desired.settings)} (revision ${config.desired.revision.slice(0, 12)}, from ${config.source})`;
}

function reportText(report) {
  if (!report) return "no report yet";
  const text = `${report.outcome} revision ${report.revision.slice(0, 12)} ${ago(report.ts)}`;
  return report.reason ? `${text}: ${report.reason}` : text;
}

function remotePanel(deviceId) {
  const path = `/api/v1/devices/${encodeURIComponent(deviceId)}`;
  const config = el("p", { id: "device-config", class: "muted", text: "remote config: loading…" });
  const lines = el("input", { id: "logs-lines", type: "number", min: 1, max: 10000, value: 200, size: 6 });
  const level = el("select", { id: "logs-level" },
    ...["debug", "info", "warning", "error", "critical"].map((l) => el("option", { value: l, text: l, selected: l === "info" })));
  const button = el("button", { type: "button", id: "logs-button", class: "action", text: "Fetch log" });
  const result = el("p", { class: "result", role: "status" });
  const output = el("pre", { id: "logs-text", class: "log", hidden: true });
  const showConfig = async () => {
    try {
      const c = await api(`${path}/config`);
      config.replaceChildren(
        el("span", { text: `remote config: ${configText(c)} · device: ${reportText(c.report)} · ` }),
        el("span", { class: c.in_sync ? "ok" : "fail", text: c.in_sync ? "in sync" : "not in sync" }));
    } catch (error) {
      config.textContent = `remote config: ${error.detail || error.message}`;
    }
  };
  button.addEventListener("click", async () => {
    button.disabled = true;
    output.hidden = true;
    try {
      const ticket = await request("POST", `${path}/logs`, { lines: Number(lines.value), level: level.value });
      showResult(result, null, "asked the device; waiting for its answer…");
      let answer = null;
      for (let i = 0; i < 60; i++) {
        answer = await api(`${path}/logs/${ticket.request_id}`);
        if (answer.state !== "pending") break;
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      if (answer.state === "pending") {
        showResult(result, new Error("the device did not answer within 30 s (offline?)"));
      } else if (answer.error) {
        showResult(result, new Error(answer.error));
      } else {
        showResult(result, null, `${answer.lines} line(s)${answer.truncated ? " (older lines left out)" : ""}`);
        output.textContent = answer.text;
        output.hidden = false;
      }
    } catch (error) {
      showResult(result, error);
    } finally {
      button.disabled = false;
    }
  });
  showConfig();
  return panel("remote", "Remote log and configuration", config,
    el("div", { class: "form" }, field("lines", lines), field("level", level), button), result, output);
}
