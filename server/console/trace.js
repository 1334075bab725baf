// Trace: one flow (a trace id, or a probe's id used as one) as a waterfall
// of hops: each log event and span in time order, its offset from the
// start, the time since the previous hop, span durations, and the first
// error marked.

import { api, h, clear, fill, add, navigate } from "/console/app.js";

export async function mount(view, ctx) {
  const id = ctx.rest[0] || "";
  const input = h("input", { id: "trace-id", placeholder: "trace id or probe id", value: id });
  const table = h("input", { id: "trace-table", placeholder: "log table (logs)", value: ctx.params.get("table") || "" });
  const open = () => {
    const q = table.value ? "?table=" + encodeURIComponent(table.value) : "";
    if (input.value.trim()) navigate("/trace/" + encodeURIComponent(input.value.trim()) + q);
  };
  input.addEventListener("keydown", (e) => e.key === "Enter" && open());
  const body = h("div", { class: "card", id: "waterfall" });
  view.append(h("div", { class: "toolbar" }, h("h1", {}, "Trace"), input, table, h("button", { onclick: open }, "Show")), body);
  if (!id) {
    body.append(h("p", { class: "muted" }, "Give a trace id (log events' trace_id, or spans' trace id)."));
    return null;
  }
  const q = new URLSearchParams();
  for (const k of ["table", "spans", "database"]) if (ctx.params.get(k)) q.set(k, ctx.params.get(k));
  try {
    const t = await api("GET", "/api/v1/trace/" + encodeURIComponent(id) + (q.toString() ? "?" + q : ""));
    draw(body, t);
  } catch (e) {
    if (e.status !== 401) fill(body, h("p", { class: "error" }, e.message));
  }
  return null;
}

function ms(v) {
  return v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms";
}

function draw(el, t) {
  clear(el);
  if (!t.events.length) {
    el.append(h("p", { class: "muted" }, "Nothing recorded for trace " + t.trace_id + "."));
    return;
  }
  const total = Math.max(t.duration_ms, 1e-3);
  el.append(
    h(
      "p",
      { id: "trace-summary" },
      t.events.length + " events (" + t.logs + " log events, " + t.spans + " spans) across " + t.hops.length + " modules: " + t.hops.join(" → ") + "; " + ms(t.duration_ms),
      t.truncated ? h("span", { class: "error" }, " (truncated)") : null,
    ),
  );
  const rows = t.events.map((e, i) => {
    const bar = h("span", { class: "wf-bar " + (e.type === "span" ? "span" : "log") });
    bar.style.left = (100 * e.since_start_ms) / total + "%";
    bar.style.width = e.type === "span" && e.duration_ms ? Math.max(0.4, (100 * e.duration_ms) / total) + "%" : "0.4%";
    const error = i === t.first_error;
    const name = e.type === "span" ? e.name : e.message;
    const indent = h("span", { class: "wf-name" }, name || "");
    indent.style.paddingLeft = (e.depth || 0) * 14 + "px";
    return h(
      "div",
      { class: "wf-row" + (error ? " first-error" : "") + " lvl-" + (e.level || e.status || ""), dataset: { service: e.service || "" } },
      h("span", { class: "wf-svc" }, e.service || ""),
      h("span", { class: "wf-host muted" }, e.host || ""),
      indent,
      h("span", { class: "num" }, "+" + ms(e.since_start_ms)),
      h("span", { class: "num muted" }, i ? "Δ " + ms(e.since_previous_ms) : ""),
      h("span", { class: "num" }, e.type === "span" && e.duration_ms !== undefined ? ms(e.duration_ms) : ""),
      h("span", { class: "wf-track" }, bar),
      error ? h("span", { class: "badge sev-critical" }, "first error") : h("span"),
    );
  });
  el.append(
    h(
      "div",
      { class: "waterfall" },
      h("div", { class: "wf-row head" }, ["module", "host", "event", "at", "since previous", "duration", "timeline", ""].map((c) => h("span", {}, c))),
      rows,
    ),
  );
}
