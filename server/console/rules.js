// Rules: every rule with its last evaluation, duration, error and query;
// check the rule files on disk, then reload them.

import { api, h, clear, fill, add, can, toast, ago, duration } from "/console/app.js";

export async function mount(view) {
  const table = h("div", { class: "card", id: "rules" });
  const result = h("div", { id: "check-result" });
  const check = h("button", { id: "check-rules", onclick: () => runCheck(result) }, "Check rule files");
  const reload = h(
    "button",
    {
      id: "reload-rules",
      onclick: async () => {
        try {
          const r = await api("POST", "/api/v1/rules/reload", {});
          toast("reloaded: " + r.rules + " rules", "ok");
          await refresh();
        } catch (e) {
          if (e.status !== 401) fill(result, h("pre", { class: "error" }, e.message));
        }
      },
    },
    "Reload",
  );
  view.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Rules"), can("rules") ? [check, reload] : null),
    result,
    table,
  );
  async function refresh() {
    const { rules } = await api("GET", "/api/v1/rules");
    fill(table,
      rules.length === 0
        ? h("p", { class: "muted" }, "No rules loaded (start the server with --rules FILE).")
        : h(
            "table",
            { class: "rules" },
            h("tr", {}, ["group", "rule", "kind", "every", "last evaluation", "took", "query", "error"].map((c) => h("th", {}, c))),
            rules.map((r) =>
              h(
                "tr",
                { class: r.error ? "bad" : "", dataset: { rule: r.rule } },
                h("td", {}, r.group),
                h("td", {}, r.rule),
                h("td", {}, r.kind + " (" + r.language + ")"),
                h("td", {}, duration(r.interval_ms)),
                h("td", {}, r.last_evaluation ? ago(new Date(r.last_evaluation).toISOString()) : "never"),
                h("td", { class: "num" }, r.last_evaluation ? r.duration_ms.toFixed(1) + " ms" : ""),
                h("td", {}, h("code", { class: "query" }, r.query)),
                h("td", { class: "error" }, r.error || ""),
              ),
            ),
          ),
    );
  }
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 10000);
  return () => clearInterval(timer);
}

async function runCheck(el) {
  fill(el, h("p", { class: "muted" }, "checking…"));
  try {
    const r = await api("POST", "/api/v1/rules/check");
    if (r.error) {
      fill(el, h("pre", { class: "error", id: "check-error" }, r.error));
    } else if (!r.ok) {
      fill(el,
        h("p", { class: "error", id: "check-error" }, r.problems.length + " rule(s) do not plan:"),
        h("ul", {}, r.problems.map((p) => h("li", {}, p.group + " / " + p.rule + ": " + p.error))),
      );
    } else {
      fill(el, h("p", { class: "ok", id: "check-ok" }, "ok: " + r.groups + " group(s), " + r.rules + " rule(s), " + r.receivers + " receiver(s), " + r.routes + " route(s). Reload to apply."));
    }
  } catch (e) {
    if (e.status !== 401) fill(el, h("pre", { class: "error" }, e.message));
  }
}
