// Logs: search with matches() over a time range, and live tails with the
// server's filters (service, host, level, text, attributes, trace id),
// pause and resume, drop markers where events were lost; several tails at
// once, each in its own tab.

import { sql, stream, h, clear, fill, add, toast, quote, VirtualList } from "/console/app.js";

const MAX_LINES = 10000;
/// What the trace view accepts (the server's rule for a trace id).
const TRACE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const LEVELS = ["", "trace", "debug", "info", "warn", "error", "fatal"];
const RANGES = { "15m": 15, "1h": 60, "6h": 360, "24h": 1440, "7d": 10080 };

export async function mount(view, ctx) {
  const tabs = h("div", { class: "tabs", id: "log-tabs" });
  const body = h("div", { id: "log-body" });
  const panes = [];
  let active = null;
  function show(pane) {
    active = pane;
    for (const p of panes) {
      p.tab.classList.toggle("active", p === pane);
      p.el.hidden = p !== pane;
    }
    pane.list && pane.list.draw();
  }
  function add(pane) {
    panes.push(pane);
    tabs.insertBefore(pane.tab, addTail);
    body.append(pane.el);
    show(pane);
  }
  const addTail = h("button", { id: "new-tail", onclick: () => add(tailPane(ctx.params, close)) }, "+ live tail");
  function close(pane) {
    pane.stop();
    pane.tab.remove();
    pane.el.remove();
    panes.splice(panes.indexOf(pane), 1);
    if (active === pane && panes.length) show(panes[0]);
  }
  tabs.append(addTail);
  view.append(h("div", { class: "toolbar" }, h("h1", {}, "Logs")), tabs, body);
  const search = searchPane(ctx.params);
  search.tab.addEventListener("click", () => show(search));
  add(search);
  if (ctx.params.get("tail") === "1") add(tailPane(ctx.params, close));
  return () => panes.forEach((p) => p.stop());
}

function filters(params, withText) {
  const f = {
    service: h("input", { class: "f-service", placeholder: "service", value: params.get("service") || "" }),
    host: h("input", { class: "f-host", placeholder: "host", value: params.get("host") || "" }),
    level: h("select", { class: "f-level" }, LEVELS.map((l) => h("option", { value: l, selected: l === (params.get("level") || "") }, l ? "≥ " + l : "any level"))),
    trace: h("input", { class: "f-trace", placeholder: "trace id", value: params.get("trace_id") || "" }),
    attr: h("input", { class: "f-attr", placeholder: "attr k=v", value: params.get("attr") || "" }),
  };
  if (withText) f.text = h("input", { class: "f-text", placeholder: withText, value: params.get("match") || "" });
  return f;
}

function line(e) {
  if (e.marker) return h("div", { class: "logline marker" }, e.marker);
  return h(
    "div",
    { class: "logline lvl-" + (e.level || "") },
    h("span", { class: "ts" }, (e.ts || "").replace("T", " ").slice(0, 23)),
    h("span", { class: "lvl" }, e.level || ""),
    h("span", { class: "svc" }, e.service || ""),
    h("span", { class: "host" }, e.host || ""),
    h("span", { class: "msg" }, e.message || ""),
    e.trace_id && TRACE_ID.test(e.trace_id)
      ? h("a", { class: "trace", href: "/trace/" + encodeURIComponent(e.trace_id) }, e.trace_id)
      : e.trace_id
        ? h("span", { class: "trace muted" }, e.trace_id)
        : null,
  );
}

function searchPane(params) {
  const f = filters(params, "matches(): words, \"phrases\", AND OR NOT");
  const range = h("select", { class: "f-range" }, Object.keys(RANGES).map((r) => h("option", { value: r }, "last " + r)));
  const table = h("input", { class: "f-table", placeholder: "table (logs)", value: params.get("table") || "" });
  const status = h("span", { class: "muted" });
  const list = new VirtualList(22, line);
  const run = async () => {
    const where = ["ts >= now() - INTERVAL '" + RANGES[range.value] + " minutes'"];
    if (f.text.value.trim()) where.push("matches(message, " + quote(f.text.value) + ")");
    if (f.service.value) where.push("service = " + quote(f.service.value));
    if (f.host.value) where.push("host = " + quote(f.host.value));
    if (f.level.value) {
      const at = LEVELS.indexOf(f.level.value);
      where.push("level IN (" + LEVELS.slice(at).map(quote).join(", ") + ")");
    }
    if (f.trace.value) where.push("trace_id = " + quote(f.trace.value));
    const t = (table.value || "logs").replace(/[^A-Za-z0-9_.]/g, "");
    status.textContent = "searching…";
    try {
      const rows = await sql("SELECT ts, level, service, host, message, trace_id FROM " + t + " WHERE " + where.join(" AND ") + " ORDER BY ts DESC LIMIT " + MAX_LINES);
      status.textContent = rows.length + (rows.length === MAX_LINES ? "+ (the newest " + MAX_LINES + ")" : "") + " lines";
      list.set(rows);
    } catch (e) {
      list.set([]);
      if (e.status === 401) return;
      // No table yet: nothing has been sent to it.
      status.textContent = / not found/.test(e.message)
        ? "No log table " + t + " yet: send logs (OTLP, Loki, Elasticsearch _bulk, syslog, line protocol; docs/logs.md) and they show here."
        : e.message;
    }
  };
  for (const el of Object.values(f)) el.addEventListener("keydown", (e) => e.key === "Enter" && run());
  const el = h(
    "div",
    { class: "pane search-pane" },
    h("div", { class: "toolbar" }, f.text, range, f.service, f.host, f.level, f.trace, table, h("button", { class: "run-search", onclick: run }, "Search"), status),
    list.el,
  );
  run();
  return { tab: h("button", { class: "tab" }, "Search"), el, list, stop: () => {} };
}

let tails = 0;

function tailPane(params, close) {
  const n = ++tails;
  const f = filters(params, "text contains");
  const since = h("select", { class: "f-since" }, ["", "1m", "5m", "15m"].map((s) => h("option", { value: s }, s ? "backfill " + s : "from now")));
  const status = h("span", { class: "muted tail-status" }, "stopped");
  const lines = [];
  const list = new VirtualList(22, line);
  list.stick = true;
  list.el.classList.add("tail-lines");
  let controller = null;
  let paused = false;
  let pending = [];
  let dirty = false;
  const pauseBtn = h("button", { class: "pause" }, "Pause");
  let missed = 0; // events that arrived while paused, beyond what is kept
  const push = (e) => {
    if (paused) {
      pending.push(e);
      // Paused, the newest MAX_LINES are kept, as on screen.
      // (one line fewer once some are missed: the marker takes it).
      if (pending.length > MAX_LINES - 1) {
        missed += pending.length - (MAX_LINES - 1);
        pending.splice(0, pending.length - (MAX_LINES - 1));
      }
      pauseBtn.textContent = "Resume (" + (pending.length + missed) + " new)";
      return;
    }
    lines.push(e);
    if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
    dirty = true;
  };
  // Drawn at most every 100 ms, whatever the event rate.
  const painter = setInterval(() => {
    if (dirty) {
      dirty = false;
      list.set(lines);
    }
  }, 100);
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      if (missed) push({ marker: "— " + missed + " events arrived while paused and are not kept here —" });
      missed = 0;
      for (const e of pending) push(e);
      pending = [];
    }
  });
  async function start() {
    if (controller) controller.abort();
    controller = new AbortController();
    lines.length = 0;
    list.set(lines);
    const q = new URLSearchParams();
    if (f.service.value) q.set("service", f.service.value);
    if (f.host.value) q.set("host", f.host.value);
    if (f.level.value) q.set("level", f.level.value);
    if (f.trace.value) q.set("trace_id", f.trace.value);
    if (f.text.value) q.set("match", f.text.value);
    if (f.attr.value) q.set("attr", f.attr.value);
    if (since.value) q.set("since", since.value);
    tab.textContent = "Tail " + n + (f.service.value ? ": " + f.service.value : "");
    tab.append(h("span", { class: "close", title: "close", onclick: (ev) => (ev.stopPropagation(), close(pane)) }, " ×"));
    status.textContent = "live";
    const mine = controller;
    try {
      await stream("/api/v1/tail?" + q, (data) => {
        const e = JSON.parse(data);
        if (typeof e.dropped === "number") push({ marker: "— " + e.dropped + " events dropped here (the tail fell behind) —" });
        else push(e);
      }, mine.signal);
      if (mine === controller) status.textContent = "ended by the server";
    } catch (e) {
      if (e.name === "AbortError") return;
      status.textContent = "stopped: " + e.message;
    }
  }
  for (const el of Object.values(f)) el.addEventListener("keydown", (e) => e.key === "Enter" && start());
  const tab = h("button", { class: "tab" });
  const el = h(
    "div",
    { class: "pane tail-pane" },
    h("div", { class: "toolbar" }, f.service, f.host, f.level, f.text, f.attr, f.trace, since, h("button", { class: "apply", onclick: start }, "Apply"), pauseBtn, status),
    list.el,
  );
  const pane = {
    tab,
    el,
    list,
    stop: () => {
      clearInterval(painter);
      if (controller) controller.abort();
    },
  };
  tab.addEventListener("click", () => {
    for (const p of document.querySelectorAll("#log-body .pane")) p.hidden = p !== el;
    for (const t of document.querySelectorAll("#log-tabs .tab")) t.classList.toggle("active", t === tab);
    list.draw();
  });
  start();
  return pane;
}
