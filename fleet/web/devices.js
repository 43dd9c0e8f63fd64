// The overview's device list: the fleet filters, sorts and pages it (GET /api/v1/devices with
// q, group, tag, presence, state, model, version, sort, limit and cursor); the page shows one page
// of DEVICE_PAGE devices and the total X-Total-Count says match, whatever the fleet's size.
"use strict";

const DEVICE_PAGE = 100;

function deviceFilter(onChange) {
  const text = el("input", { id: "filter-id", type: "search", placeholder: "id contains", size: 14, maxlength: 64 });
  const selects = {
    group: el("select", { id: "filter-group" }),
    tag: el("select", { id: "filter-tag" }),
    model: el("select", { id: "filter-model" }),
  };
  const presence = el("select", { id: "filter-presence" },
    el("option", { value: "", text: "online or offline" }), el("option", { value: "online", text: "online" }),
    el("option", { value: "offline", text: "offline" }));
  const sort = el("select", { id: "filter-sort" },
    el("option", { value: "device_id", text: "id A–Z" }), el("option", { value: "-device_id", text: "id Z–A" }),
    el("option", { value: "-last_seen", text: "seen most recently" }), el("option", { value: "last_seen", text: "seen longest ago" }));
  const known = { group: "", tag: "", model: "" };
  for (const input of [text, presence, sort, ...Object.values(selects)]) input.addEventListener("input", onChange);
  const setOptions = (key, values, anyText) => {
    const signature = JSON.stringify(values);
    if (known[key] === signature) return;  // unchanged: leave an open <select> alone
    known[key] = signature;
    const chosen = selects[key].value;
    selects[key].replaceChildren(el("option", { value: "", text: anyText }), ...values.map((v) => el("option", { value: v, text: v })));
    selects[key].value = values.includes(chosen) ? chosen : "";
  };
  return {
    node: el("div", { class: "form filter", id: "filter" }, field("device", text), field("group", selects.group),
      field("tag", selects.tag), field("model", selects.model), field("presence", presence), field("order", sort)),
    // The choices: groups and tags from GET /api/v1/labels, models from the summary ("name version").
    learn(labels, models) {
      setOptions("group", labels.groups, "any group");
      setOptions("tag", labels.tags, "any tag");
      setOptions("model", [...models].sort(), "any model");
    },
    // The list's query parameters for the current choices (a model choice is "name version").
    params() {
      const params = new URLSearchParams({ sort: sort.value });
      const needle = text.value.trim();
      if (needle) params.set("q", needle);
      if (selects.group.value) params.set("group", selects.group.value);
      if (selects.tag.value) params.set("tag", selects.tag.value);
      if (selects.model.value) {
        const [name, version] = selects.model.value.split(" ");
        params.set("model", name);
        if (version) params.set("version", version);
      }
      // "online"/"offline" mean a device that reported and is not revoked.
      if (presence.value) {
        params.set("presence", presence.value);
        params.set("state", "active");
      }
      return params;
    },
  };
}

// Previous / next over the fleet's cursors: the cursors of the pages seen so far, so that
// "previous" goes back without an offset, and a refresh reloads the same page.
function devicePager(onChange) {
  let cursors = [null];
  let next = null;
  const prev = el("button", { type: "button", id: "devices-prev", text: "‹ previous" });
  const following = el("button", { type: "button", id: "devices-next", text: "next ›" });
  prev.addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); onChange(); } });
  following.addEventListener("click", () => { if (next) { cursors.push(next); onChange(); } });
  return {
    node: el("div", { class: "pager", id: "devices-pager" }, prev, " ", following),
    reset() { cursors = [null]; next = null; },
    path(params) {
      const query = new URLSearchParams(params);
      query.set("limit", String(DEVICE_PAGE));
      const cursor = cursors[cursors.length - 1];
      if (cursor) query.set("cursor", cursor);
      return `/api/v1/devices?${query}`;
    },
    // After a page arrived: remember where the next one starts; the first shown row's number.
    shown(nextCursor) {
      next = nextCursor;
      prev.disabled = cursors.length <= 1;
      following.disabled = !next;
      return (cursors.length - 1) * DEVICE_PAGE + 1;
    },
    // A cursor the fleet refused (it restarted on another sort, say): back to the first page.
    restart() { cursors = [null]; },
  };
}
