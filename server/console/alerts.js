// Alerts: filter by state, severity and labels; acknowledge with a
// comment, withdraw, resolve, silence from an alert (matchers prefilled);
// the escalation progress of each notification group; an alert's history.

import { api, h, clear, fill, add, session, can, toast, ago, labelText, VirtualList, navigate } from "/console/app.js";

const STATES = ["active", "firing", "pending", "resolved"];

export async function mount(view, ctx) {
  const params = ctx.params;
  const state = params.get("state") || "active";
  const text = params.get("q") || "";
  const labels = {};
  for (const [k, v] of params) if (!["state", "q", "id", "wall"].includes(k)) labels[k] = v;

  const stateSel = h("select", { id: "alert-state" }, STATES.map((s) => h("option", { value: s, selected: s === state }, s)));
  const labelInput = h("input", { id: "alert-labels", placeholder: "labels: host=web-1, severity=critical", value: labelText(labels) });
  const search = h("input", { id: "alert-search", placeholder: "search name, labels, summary", value: text });
  const apply = () => {
    const p = new URLSearchParams();
    p.set("state", stateSel.value);
    if (search.value) p.set("q", search.value);
    for (const part of labelInput.value.split(",")) {
      const i = part.indexOf("=");
      if (i > 0) p.set(part.slice(0, i).trim(), part.slice(i + 1).trim());
    }
    navigate("/alerts?" + p);
  };
  stateSel.addEventListener("change", apply);
  labelInput.addEventListener("keydown", (e) => e.key === "Enter" && apply());
  let typed = null;
  search.addEventListener("input", () => {
    clearTimeout(typed);
    typed = setTimeout(() => refresh().catch((e) => e.status !== 401 && toast(e.message)), 300);
  });

  const summary = h("span", { class: "muted", id: "alert-count" });
  const detail = h("div", { class: "card detail", id: "alert-detail" }, h("p", { class: "muted" }, "Select an alert."));
  const groupsEl = h("div", { class: "card", id: "escalations" });
  const silencesEl = h("div", { class: "card", id: "silences" });
  let selected = params.get("id");
  let shown = null; // the selected alert as last drawn

  const list = new VirtualList(34, (a) =>
    a === undefined
      ? h("div", { class: "row alert-row loading" }, h("span", { class: "muted" }, "…"))
      : h(
          "div",
          {
            class: "row alert-row" + (a.id === selected ? " selected" : ""),
            dataset: { id: a.id, alertname: a.alertname },
            onclick: () => {
              selected = a.id;
              shown = JSON.stringify(a);
              list.draw();
              showDetail(detail, a, refresh);
            },
          },
          h("span", { class: "badge sev-" + (a.severity || "none") }, a.severity || "none"),
          h("span", { class: "name" }, a.alertname),
          h("span", { class: "state st-" + a.state }, a.state + (a.muted ? " (muted)" : "")),
          h("span", { class: "num" }, a.value === null ? "" : String(a.value)),
          h("span", { class: "labels" }, labelText(withoutName(a.labels))),
          h("span", { class: "muted" }, ago(a.activeSince || a.pendingSince)),
          h("span", { class: "acked" }, a.ack ? "acked by " + a.ack.by : ""),
        ),
  );

  // The list is read a page at a time, in the server's order (most severe
  // first), as it scrolls into view: 10,000 alerts are not sent at once.
  const pages = new PagedRows(PAGE, (offset) => {
    const p = new URLSearchParams(labels);
    p.set("state", state);
    if (search.value) p.set("q", search.value);
    p.set("limit", String(PAGE));
    p.set("offset", String(offset));
    return api("GET", "/api/v1/alerts?" + p);
  }, () => {
    summary.textContent = pages.length + " alerts";
    list.set(pages);
  });

  async function refresh() {
    const wanted = Math.floor(list.el.scrollTop / list.rowHeight / PAGE);
    await pages.reload(wanted);
    // The detail is redrawn only when its alert changed, and never under
    // the hands of someone typing a comment or filling in a silence.
    let sel = null;
    if (selected) {
      try {
        sel = await api("GET", "/api/v1/alerts/" + encodeURIComponent(selected));
      } catch (e) {
        if (e.status === 404) selected = null;
        else throw e;
      }
    }
    const focus = document.activeElement;
    const typing = detail.contains(focus) && (focus.tagName === "INPUT" || focus.tagName === "TEXTAREA");
    const busy = typing || detail.querySelector("form");
    if (sel && !busy && JSON.stringify(sel) !== shown) {
      shown = JSON.stringify(sel);
      await showDetail(detail, sel, refresh);
    }
    await drawGroups(groupsEl, pages.loaded());
    await drawSilences(silencesEl, refresh);
  }

  view.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Alerts"), stateSel, labelInput, search, summary),
    h("div", { class: "split" }, list.el, detail),
    h("div", { class: "columns" }, groupsEl, silencesEl),
  );
  let stopped = false;
  let timer = null;
  const loop = async () => {
    try {
      await refresh();
    } catch (e) {
      if (e.status !== 401) toast(e.message);
    }
    if (!stopped) timer = setTimeout(loop, session.config.refreshMs);
  };
  await loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

const PAGE = 500;

/// Rows of a list read from the server a page at a time: `length` is the
/// total the server reported, `slice` gives the loaded rows (undefined for
/// rows not yet read) and asks for the pages it lacks.
class PagedRows {
  constructor(size, fetchPage, changed) {
    this.size = size;
    this.fetchPage = fetchPage;
    this.changed = changed;
    this.pages = new Map();
    this.pending = new Set();
    this.length = 0;
    this.generation = 0;
  }
  async load(i, generation) {
    this.pending.add(i);
    try {
      const r = await this.fetchPage(i * this.size);
      if (generation !== this.generation) return;
      this.pages.set(i, r.alerts);
      this.length = r.total;
      this.changed();
    } finally {
      this.pending.delete(i);
    }
  }
  /// Forgets what was read and reads the first page and page `i` again.
  async reload(i) {
    const generation = ++this.generation;
    const keep = this.pages;
    this.pages = new Map();
    // Until the new pages arrive, the old ones stay on screen.
    for (const [k, v] of keep) if (k === 0 || k === i) this.pages.set(k, v);
    await Promise.all([...new Set([0, i])].map((k) => this.load(k, generation)));
  }
  slice(a, b) {
    const out = [];
    for (let n = a; n < Math.min(b, this.length); n++) {
      const i = Math.floor(n / this.size);
      const page = this.pages.get(i);
      if (!page && !this.pending.has(i)) this.load(i, this.generation).catch(() => {});
      out.push(page ? page[n - i * this.size] : undefined);
    }
    return out;
  }
  loaded() {
    return [...this.pages.values()].flat();
  }
}

function withoutName(labels) {
  const l = Object.assign({}, labels);
  delete l.alertname;
  return l;
}

function who() {
  return session.user ? session.user.name : "console";
}

async function showDetail(el, a, refresh) {
  const comment = h("input", { id: "ack-comment", placeholder: "comment (what you are doing about it)" });
  const act = async (what, body) => {
    try {
      await api("POST", "/api/v1/alerts/" + encodeURIComponent(a.id) + "/" + what, body);
      toast(what + ": done", "ok");
      document.activeElement.blur();
      await refresh();
    } catch (e) {
      if (e.status !== 401) toast(e.message);
    }
  };
  const actions = h("div", { class: "actions" });
  if (can("ack") && a.state === "firing") {
    if (!a.ack) actions.append(comment, h("button", { id: "ack", onclick: () => act("ack", { by: who(), comment: comment.value }) }, "Acknowledge"));
    else actions.append(h("button", { id: "unack", onclick: () => act("unack", { by: who() }) }, "Withdraw acknowledgement"));
  }
  if (can("ack") && (a.state === "firing" || a.state === "pending")) {
    actions.append(h("button", { id: "resolve", onclick: () => act("resolve", { by: who(), comment: comment.value || "resolved from the console" }) }, "Resolve"));
  }
  if (can("silence")) actions.append(h("button", { id: "silence", onclick: () => silenceForm(el, a, refresh) }, "Silence…"));

  const history = h("div", { class: "timeline", id: "alert-history" }, h("p", { class: "muted" }, "loading history…"));
  fill(el,
    h("h2", {}, a.alertname, " ", h("span", { class: "badge sev-" + (a.severity || "none") }, a.severity || "none")),
    h(
      "dl",
      {},
      h("dt", {}, "state"),
      h("dd", {}, a.state + (a.muted ? " — muted (" + a.muted.kind + ")" : "")),
      h("dt", {}, "value"),
      h("dd", {}, String(a.value)),
      h("dt", {}, "since"),
      h("dd", {}, (a.activeSince || a.pendingSince || "") + " (" + ago(a.activeSince || a.pendingSince) + ")"),
      h("dt", {}, "labels"),
      h("dd", {}, labelText(a.labels)),
      Object.entries(a.annotations || {}).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
      a.ack ? [h("dt", {}, "acknowledged"), h("dd", { id: "ack-info" }, a.ack.by + (a.ack.comment ? ": " + a.ack.comment : "") + " " + ago(a.ack.at))] : null,
      a.ackLifted ? [h("dt", {}, "ack lifted"), h("dd", {}, "acked by " + a.ackLifted.by + " at " + a.ackLifted.severity + "; severity rose")] : null,
    ),
    actions,
    h("h3", {}, "History"),
    history,
  );
  try {
    const rows = (await api("GET", "/api/v1/alerts/" + encodeURIComponent(a.id) + "/history")).history;
    fill(history,
      rows.length === 0
        ? h("p", { class: "muted" }, "no transitions recorded")
        : rows.map((r) =>
            h(
              "div",
              { class: "tl-item st-" + r.to_state },
              h("span", { class: "tl-time" }, new Date(r.ts).toLocaleString()),
              h("span", {}, r.from_state + " → " + r.to_state + (r.severity ? " (" + r.severity + ")" : "")),
              r.note ? h("span", { class: "muted" }, " " + r.note) : null,
            ),
          ),
    );
  } catch (e) {
    fill(history, h("p", { class: "error" }, e.message));
  }
}

function silenceForm(el, a, refresh) {
  const lines = Object.entries(a.labels)
    .filter(([k]) => k !== "severity")
    .map(([k, v]) => k + "=" + v)
    .join("\n");
  const matchers = h("textarea", { id: "silence-matchers", rows: "4" }, lines);
  const durationIn = h("input", { id: "silence-duration", value: "1h" });
  const comment = h("input", { id: "silence-comment", placeholder: "why" });
  const form = h(
    "form",
    { class: "card", id: "silence-form" },
    h("h3", {}, "New silence"),
    h("label", {}, "Matchers (one per line: name=value, name!=value, name=~regex, name!~regex)", matchers),
    h("label", {}, "Duration", durationIn),
    h("label", {}, "Comment", comment),
    h("button", { type: "submit" }, "Create silence"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const ms = matchers.value
        .split("\n")
        .map((l) => l.trim())
        .filter(Boolean)
        .map(parseMatcher);
      const r = await api("POST", "/api/v1/silences", { matchers: ms, duration: durationIn.value, createdBy: who(), comment: comment.value || "from the console" });
      toast("silence " + r.silenceID + " created", "ok");
      form.remove();
      await refresh();
    } catch (e) {
      if (e.status !== 401) toast(e.message);
    }
  });
  el.append(form);
}

function parseMatcher(line) {
  const m = /^([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*)$/.exec(line);
  if (!m) throw new Error("not a matcher: " + line);
  const op = m[2];
  let value = m[3].trim();
  if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
  return { name: m[1], value, isRegex: op.includes("~"), isEqual: !op.startsWith("!") };
}

const GROUPS_SHOWN = 100;

async function drawGroups(el, alerts) {
  let answer;
  try {
    answer = await api("GET", "/api/v1/alerts/groups?limit=" + GROUPS_SHOWN);
  } catch (e) {
    fill(el, h("h2", {}, "Escalation"), h("p", { class: "error" }, e.message));
    return;
  }
  // Redrawn only when something changed: a table of many groups rebuilt
  // at every refresh would hold the page up.
  const text = JSON.stringify(answer);
  if (el.dataset.shown === text) return;
  el.dataset.shown = text;
  const groups = answer.groups;
  const names = new Map(alerts.map((a) => [a.id, a.alertname]));
  const escalating = groups.filter((g) => g.escalation);
  const STOPPED = { acknowledged: "acknowledged: stopped", held: "silenced or inhibited: waiting", resolved: "nothing fires", completed: "every step sent" };
  fill(
    el,
    h("h2", {}, "Escalation"),
    answer.total > groups.length ? h("p", { class: "muted" }, "The " + groups.length + " of " + answer.total + " groups whose next step is due soonest.") : null,
    escalating.length === 0
      ? h("p", { class: "muted" }, "No notification group is escalating.")
      : h(
          "table",
          { id: "escalation-table" },
          h("tr", {}, h("th", {}, "group"), h("th", {}, "chain"), h("th", {}, "step"), h("th", {}, "paged"), h("th", {}, "next")),
          escalating.map((g) => {
            const e = g.escalation;
            const status = e.stopped ? STOPPED[e.stopped] || e.stopped : null;
            return h(
              "tr",
              { dataset: { key: g.key } },
              h("td", {}, labelText(g.groupLabels), h("div", { class: "muted" }, g.alerts.map((a) => names.get(a.id) || a.id).join(", "))),
              h("td", {}, e.policy + (e.cycle ? " (run " + (e.cycle + 1) + ")" : "")),
              h("td", { class: "esc-step" }, e.lastStep ? e.lastStep + " of " + e.steps + " sent " + ago(e.lastStepAt) : "not started"),
              h("td", {}, g.notified.join(", ")),
              h("td", { class: "esc-next" }, status || (e.next ? "step " + e.next.step + " to " + e.next.notify.join(", ") + " " + ago(e.next.dueAt) : "")),
            );
          }),
        ),
  );
}

async function drawSilences(el, refresh) {
  let silences;
  try {
    silences = (await api("GET", "/api/v1/silences")).silences.filter((s) => s.status.state !== "expired");
  } catch (e) {
    fill(el, h("h2", {}, "Silences"), h("p", { class: "error" }, e.message));
    return;
  }
  fill(el,
    h("h2", {}, "Silences"),
    silences.length === 0
      ? h("p", { class: "muted" }, "No active or pending silence.")
      : h(
          "table",
          { id: "silence-table" },
          h("tr", {}, h("th", {}, "matchers"), h("th", {}, "state"), h("th", {}, "ends"), h("th", {}, "by"), h("th", {})),
          silences.map((s) =>
            h(
              "tr",
              {},
              h("td", {}, s.matchers.map((m) => m.name + (m.isEqual === false ? "!" : "") + (m.isRegex ? "~" : "=") + m.value).join(", ")),
              h("td", {}, s.status.state),
              h("td", {}, ago(s.endsAt)),
              h("td", {}, s.createdBy + (s.comment ? ": " + s.comment : "")),
              h(
                "td",
                {},
                can("silence")
                  ? h(
                      "button",
                      {
                        onclick: async () => {
                          try {
                            await api("DELETE", "/api/v1/silences/" + encodeURIComponent(s.id));
                            await refresh();
                          } catch (e) {
                            if (e.status !== 401) toast(e.message);
                          }
                        },
                      },
                      "Expire",
                    )
                  : null,
              ),
            ),
          ),
        ),
  );
}
