// Operator actions: forms that ask for a confirmation, then call the REST API. A refusal shows the
// API's `detail` exactly as it came. Shown only when the session may act (operator, admin, or an
// open API).
"use strict";

// A message under a form: success text, or the refusal's status and the API's detail verbatim.
function showResult(box, error, text) {
  if (!error) {
    box.replaceChildren(el("span", { class: "ok", text: text }));
    return;
  }
  const status = error instanceof ApiError ? `Refused (HTTP ${error.status}): `
    : error instanceof Unauthorized ? "Signed out (HTTP 401): " : error instanceof TypeError ? "Failed: " : "Check the form: ";
  box.replaceChildren(el("span", { class: "error", text: status }), el("span", { class: "detail", text: error.detail || error.message }));
}

// One button that first shows "question? Confirm / Cancel"; perform() runs only after Confirm.
// describe() returns the question, or throws an Error whose message says what to fix in the form.
function confirmable(options) {
  const { id, label, describe, perform, done, result } = options;
  const button = el("button", { type: "button", id: id, class: "action", text: label });
  const yes = el("button", { type: "button", class: "confirm-yes", text: "Confirm" });
  const no = el("button", { type: "button", class: "confirm-no", text: "Cancel" });
  const question = el("span", { class: "question" });
  const bar = el("span", { class: "confirm", hidden: true }, question, yes, no);
  const close = () => { bar.hidden = true; button.hidden = false; };
  button.addEventListener("click", () => {
    let text;
    try {
      text = describe();
    } catch (error) {
      showResult(result, error);
      return;
    }
    question.textContent = text;
    result.replaceChildren();
    button.hidden = true;
    bar.hidden = false;
    yes.focus();
  });
  no.addEventListener("click", close);
  yes.addEventListener("click", async () => {
    yes.disabled = no.disabled = true;
    try {
      showResult(result, null, done(await perform()));
    } catch (error) {
      if (error instanceof Unauthorized) session.role = null;  // token gone: sign in again
      showResult(result, error);
    } finally {
      yes.disabled = no.disabled = false;
      close();
      refreshSoon();
    }
  });
  return { button: button, node: el("span", { class: "confirmable" }, button, bar) };
}

function field(label, input) {
  return el("label", {}, el("span", { class: "muted", text: label }), input);
}

// Name and version inputs suggesting the uploaded models (free text: the API judges the choice).
function modelInputs(prefix) {
  const names = el("datalist", { id: `${prefix}-names` });
  const versions = el("datalist", { id: `${prefix}-versions` });
  const name = el("input", { id: `${prefix}-name`, list: names.id, required: true, size: 14, autocomplete: "off" });
  const version = el("input", { id: `${prefix}-version`, list: versions.id, required: true, size: 8, autocomplete: "off" });
  let models = [];
  const fill = () => {
    const chosen = name.value.trim();
    names.replaceChildren(...[...new Set(models.map((m) => m.name))].map((n) => el("option", { value: n })));
    versions.replaceChildren(...models.filter((m) => !chosen || m.name === chosen).map((m) => el("option", { value: m.version })));
  };
  name.addEventListener("change", fill);
  api("/api/v1/models").then((list) => { models = list; fill(); }).catch(() => {});
  const read = () => {
    const ref = { name: name.value.trim(), version: version.value.trim() };
    if (!ref.name || !ref.version) throw new Error("enter a model name and a version");
    return ref;
  };
  return { nodes: [field("model", name), field("version", version), names, versions], read: read };
}

// A message about an earlier attempt goes once the operator edits the form again.
function panel(id, title, ...children) {
  const section = el("section", { class: "actions", id: id }, el("h2", { text: title }), ...children);
  section.addEventListener("input", () => { for (const r of section.querySelectorAll(".result")) r.replaceChildren(); });
  return section;
}

// Device page: make one model version this device's desired state.
function deployForm(deviceId) {
  const model = modelInputs("deploy");
  let pending = null;  // what the operator confirms is what is sent
  const result = el("p", { class: "result", role: "status" });
  const action = confirmable({
    id: "deploy-button",
    label: "Deploy…",
    result: result,
    describe: () => {
      const ref = pending = model.read();
      return `Deploy ${ref.name} ${ref.version} to ${deviceId}? It is told to update now.`;
    },
    perform: () => request("POST", "/api/v1/deployments", { ...pending, device_id: deviceId }),
    done: (r) => {
      const skipped = r.devices_skipped.map((s) => s.reason).join("; ");
      return skipped ? `Not assigned: ${skipped}` : `${deviceId} now should run ${r.name} ${r.version}` +
        (r.devices_notified.length ? "; it was told to check for the update." : "; it will pick it up when it next asks.");
    },
  });
  return panel("deploy", "Deploy to this device", el("div", { class: "form" }, ...model.nodes, action.node), result);
}

function splitList(text) {
  return text.split(",").map((s) => s.trim()).filter((s) => s);
}

// Overview: a gated rollout to every device, a group, devices with tags, or listed devices.
function rolloutForm() {
  const model = modelInputs("rollout");
  const kind = el("select", { id: "rollout-target-kind" },
    el("option", { value: "all", text: "all devices" }), el("option", { value: "group", text: "group" }),
    el("option", { value: "tags", text: "tags (all of)" }), el("option", { value: "devices", text: "device ids" }));
  const value = el("input", { id: "rollout-target", size: 16, placeholder: "—", disabled: true });
  kind.addEventListener("change", () => {
    value.disabled = kind.value === "all";
    value.placeholder = { all: "—", group: "group name", tags: "tag, tag", devices: "id, id" }[kind.value];
  });
  const waves = el("input", { id: "rollout-waves", value: "1, 10%, 50%, 100%", size: 16 });
  const soak = el("input", { id: "rollout-soak", type: "number", min: "0", step: "any", value: "600", size: 6 });
  const read = () => {
    const target = {};
    const text = value.value.trim();
    if (kind.value === "all") target.all = true;
    else if (!text) throw new Error(`enter the ${kind.value === "group" ? "group" : kind.value} to target`);
    else if (kind.value === "group") target.group = text;
    else target[kind.value] = splitList(text);
    const soakS = Number(soak.value);
    if (soak.value.trim() === "" || !Number.isFinite(soakS)) throw new Error("the soak time is a number of seconds");
    return { ...model.read(), target: target, waves: splitList(waves.value), gates: { soak_s: soakS } };
  };
  const result = el("p", { class: "result", role: "status" });
  let pending = null;
  const action = confirmable({
    id: "rollout-button",
    label: "Start rollout…",
    result: result,
    describe: () => {
      const body = pending = read();
      const target = body.target.all ? "every device" : kind.value === "group" ? `group ${body.target.group}`
        : `${kind.value} ${body.target[kind.value].join(", ")}`;
      return `Roll ${body.name} ${body.version} out to ${target} in waves ${body.waves.join(", ")}, ${body.gates.soak_s} s soak each?`;
    },
    perform: () => request("POST", "/api/v1/rollouts", pending),
    done: (r) => {
      location.hash = `#/rollout/${r.id}`;
      return `Rollout #${r.id} started.`;
    },
  });
  return panel("start-rollout", "Start a rollout", el("div", { class: "form" }, ...model.nodes,
    field("target", kind), field("", value), field("waves", waves), field("soak s", soak), action.node), result);
}

// Rollout page: pause, resume, abort, roll back; update(rollout) enables what its state allows.
const ROLLOUT_ACTIONS = [
  ["pause", "Pause…", ["running"], "Pause rollout #{id}? No further wave starts until it is resumed."],
  ["resume", "Resume…", ["paused"], "Resume rollout #{id}? The current wave's soak starts over."],
  ["abort", "Abort…", ["running", "paused"], "Abort rollout #{id}? No further wave; devices keep what they were given."],
  ["rollback", "Roll back…", ["running", "paused", "halted", "aborted", "completed"],
    "Roll back rollout #{id}? Every device it reached gets its previous model back."],
];

function rolloutActions(id) {
  const reason = el("input", { id: "rollout-reason", size: 30, placeholder: "optional: why (kept with the rollout)" });
  const result = el("p", { class: "result", role: "status" });
  const buttons = ROLLOUT_ACTIONS.map(([name, label, _states, question]) => confirmable({
    id: `rollout-${name}`,
    label: label,
    result: result,
    describe: () => question.replace("{id}", id),
    perform: () => {
      const why = reason.value.trim();
      return request("POST", `/api/v1/rollouts/${encodeURIComponent(id)}/${name}`, why ? { reason: why } : undefined);
    },
    done: (r) => `Rollout #${r.id} is ${r.state}.`,
  }));
  const node = panel("rollout-actions", "Act on this rollout",
    el("div", { class: "form" }, ...buttons.map((b) => b.node), field("reason", reason)), result);
  for (const b of buttons) b.button.disabled = true;  // until the rollout's state is known
  const update = (rollout) => {
    ROLLOUT_ACTIONS.forEach(([, , states], i) => { buttons[i].button.disabled = !states.includes(rollout.state); });
  };
  return { node: node, update: update };
}
