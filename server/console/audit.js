// Audit: who did what, from where, and with what outcome (`system.audit`,
// readable by roles with the `audit` permission: auditors and admins).

import { sql, h, fill, quote, toast, VirtualList } from "/console/app.js";

const RANGES = { "1h": 60, "24h": 1440, "7d": 10080, "30d": 43200 };
const MAX_ROWS = 5000;

export async function mount(view, ctx) {
  const p = ctx.params;
  const actor = h("input", { id: "audit-actor", placeholder: "actor (user:ann, token:…)", value: p.get("actor") || "" });
  const action = h("input", { id: "audit-action", placeholder: "action contains (POST /api/v1/sql)", value: p.get("action") || "" });
  const outcome = h("select", { id: "audit-outcome" }, ["", "ok", "denied", "error"].map((o) => h("option", { value: o, selected: o === (p.get("outcome") || "") }, o || "any outcome")));
  const range = h("select", { id: "audit-range" }, Object.keys(RANGES).map((r) => h("option", { value: r, selected: r === (p.get("range") || "24h") }, "last " + r)));
  const status = h("span", { class: "muted", id: "audit-status" });
  const cols = ["ts", "actor", "role", "source", "interface", "action", "target", "outcome", "status", "detail"];
  const list = new VirtualList(24, (r) =>
    h("div", { class: "row audit-row o-" + r.outcome }, cols.map((c) => h("span", { class: "c-" + c, title: String(r[c] ?? "") }, c === "ts" ? String(r.ts).replace("T", " ").slice(0, 23) : String(r[c] ?? "")))),
  );
  const run = async () => {
    const q = new URLSearchParams({ range: range.value });
    const where = ["ts >= now() - INTERVAL '" + RANGES[range.value] + " minutes'"];
    if (actor.value) {
      where.push("actor = " + quote(actor.value));
      q.set("actor", actor.value);
    }
    if (action.value) {
      where.push("strpos(action, " + quote(action.value) + ") > 0");
      q.set("action", action.value);
    }
    if (outcome.value) {
      where.push("outcome = " + quote(outcome.value));
      q.set("outcome", outcome.value);
    }
    history.replaceState(null, "", "/audit?" + q);
    status.textContent = "loading…";
    try {
      const rows = await sql("SELECT " + cols.join(", ") + " FROM system.audit WHERE " + where.join(" AND ") + " ORDER BY ts DESC, seq DESC LIMIT " + MAX_ROWS);
      status.textContent = rows.length + (rows.length === MAX_ROWS ? "+ (the newest " + MAX_ROWS + ")" : "") + " entries";
      list.set(rows);
    } catch (e) {
      status.textContent = "";
      if (e.status !== 401) toast(e.message);
    }
  };
  for (const el of [actor, action]) el.addEventListener("keydown", (e) => e.key === "Enter" && run());
  for (const el of [outcome, range]) el.addEventListener("change", run);
  view.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Audit"), actor, action, outcome, range, h("button", { onclick: run }, "Show"), status),
    h("p", { class: "muted" }, "Every administrative action, every refusal and every SQL statement, newest first; the entries are hash-chained (docs/security.md)."),
    fill(h("div", { class: "row head audit-row" }), cols.map((c) => h("span", { class: "c-" + c }, c))),
    list.el,
  );
  await run();
  return null;
}
