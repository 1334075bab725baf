// Overview, and the same page as a wall display (`/?wall=1`): firing
// alerts by severity and by group, a health grid of devices, today's alert
// trend, and the top-N panels of `[console.panels]`.

import { api, sql, h, clear, fill, add, session, can, severityRank, SEVERITY_ORDER, quote } from "/console/app.js";
import { timeChart } from "/console/explore.js";

export async function mount(view, ctx) {
  const cfg = session.config;
  const groupBy = ctx.params.get("group") || "";
  const wall = ctx.params.get("wall") === "1";
  const trendShown = can("query") && !session.user.alertScope;
  const counts = h("div", { class: "counts", id: "severity-counts" });
  const byGroup = h("div", { class: "card" });
  const grid = h("div", { class: "card", id: "health" });
  const trend = h("div", { class: "card", id: "trend" });
  const panels = h("div", { class: "panels" });
  const stamp = h("span", { class: "muted" });
  view.append(
    h(
      "div",
      { class: "toolbar" },
      h("h1", {}, "Overview"),
      stamp,
      wall ? null : h("a", { href: "/?wall=1" + (groupBy ? "&group=" + encodeURIComponent(groupBy) : "") }, "Wall display"),
    ),
    counts,
    // The trend and the panels are SQL: for roles that may run it.
    // (system.alert_history holds every alert: not for a role limited to some).
    h("div", { class: "columns" }, byGroup, trendShown ? trend : null),
    grid,
    panels,
  );
  let chart = null;
  let stopped = false;
  // Groups opened and cells asked for, kept across refreshes.
  const open = { groups: new Set(), shown: new Map() };

  async function refresh() {
    const summary = await api("GET", "/api/v1/alerts/summary");
    drawCounts(counts, summary);
    drawGroups(byGroup, summary);
    // The grouping picked since the page opened is in the address.
    const current = new URLSearchParams(location.search).get("group") || "";
    await drawHealth(grid, summary, cfg, current, open);
    if (trendShown) chart = await drawTrend(trend, chart);
    if (can("query")) {
      await drawPanels(panels, cfg.panels);
    }
    stamp.textContent = "updated " + new Date().toLocaleTimeString();
  }
  let timer = null;
  const loop = async () => {
    try {
      await refresh();
    } catch (e) {
      stamp.textContent = "refresh failed: " + e.message;
    }
    if (!stopped) timer = setTimeout(loop, cfg.refreshMs);
  };
  await loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (chart) chart.destroy();
  };
}

function drawCounts(el, summary) {
  const by = summary.bySeverity;
  fill(
    el,
    h("div", { class: "count total" }, h("b", {}, String(summary.firing)), " firing"),
    Object.keys(by)
      .sort((a, b) => severityRank(a) - severityRank(b))
      .map((s) =>
        h("a", { class: "count sev-" + s, href: "/alerts?state=firing&severity=" + encodeURIComponent(s), dataset: { severity: s } }, h("b", {}, String(by[s])), " " + s),
      ),
  );
}

function drawGroups(el, summary) {
  const rows = summary.byGroup.slice().sort((a, b) => b.firing - a.firing);
  fill(
    el,
    h("h2", {}, "Firing by rule group"),
    rows.length === 0
      ? h("p", { class: "muted" }, "Nothing fires.")
      : h(
          "table",
          {},
          h("tr", {}, h("th", {}, "group"), h("th", {}, "firing"), h("th", {}, "worst")),
          rows.map((g) => h("tr", {}, h("td", {}, g.group), h("td", { class: "num" }, String(g.firing)), h("td", { class: "sev-" + g.worst }, g.worst))),
        ),
  );
}

/// Devices (from `[console] devices_sql`, or the alerts' device label),
/// each coloured by its worst firing alert, grouped by a column or label
/// the viewer picks.
async function drawHealth(el, summary, cfg, groupBy, open) {
  const label = summary.deviceLabel;
  // Each device's worst firing alert, as the server worked it out.
  const worst = new Map(summary.devices.map((d) => [d.device, d]));
  let devices; // [{device, attrs}]
  let error = null;
  if (cfg.devicesSql) {
    try {
      const rows = await sql(cfg.devicesSql);
      devices = rows.map((r) => ({ device: String(r.device), attrs: r }));
    } catch (e) {
      error = e.message;
    }
  }
  if (devices) {
    // A device in trouble that the inventory does not list (a new host)
    // is shown all the same, with its alert's labels.
    const listed = new Set(devices.map((d) => d.device));
    for (const [d, a] of worst) if (!listed.has(d)) devices.push({ device: d, attrs: a.labels, unlisted: true });
  } else {
    devices = [...worst.keys()].map((d) => ({ device: d, attrs: worst.get(d).labels }));
  }
  const keys = new Set();
  for (const d of devices) for (const k of Object.keys(d.attrs)) if (k !== "device" && k !== label) keys.add(k);
  // Only a column the devices have groups them (`?group=` is typed by anyone).
  if (!keys.has(groupBy)) groupBy = "";
  const select = h(
    "select",
    {
      id: "health-group",
      onchange: (ev) => {
        const p = new URLSearchParams(location.search);
        if (ev.target.value) p.set("group", ev.target.value);
        else p.delete("group");
        history.replaceState(null, "", location.pathname + "?" + p);
        open.groups.clear();
        open.shown.clear();
        drawGrid(body, devices, worst, ev.target.value, label, open);
      },
    },
    h("option", { value: "" }, "(no grouping)"),
    [...keys].sort().map((k) => h("option", { value: k, selected: k === groupBy }, k)),
  );
  const body = h("div");
  fill(el,
    h("div", { class: "toolbar" }, h("h2", {}, "Health by " + label), h("label", {}, "group by ", select)),
    error ? h("p", { class: "error" }, "devices_sql: " + error) : null,
    body,
  );
  el.dataset.total = String(devices.length);
  drawGrid(body, devices, worst, groupBy, label, open);
}

/// The most cells drawn at once: past it, groups are drawn closed (a line
/// of counts each, opened on a click) and an open group or an ungrouped
/// grid draws its worst devices first, more on request. 50,000 cells make
/// a page that takes seconds to draw and cannot be read anyway.
export const GRID_CELLS = 500;

function drawGrid(el, devices, worst, groupBy, label, open) {
  const groups = new Map();
  for (const d of devices) {
    const g = groupBy ? String((Object.hasOwn(d.attrs, groupBy) ? d.attrs[groupBy] : null) ?? "(none)") : "";
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(d);
  }
  const big = devices.length > GRID_CELLS;
  const severity = (d) => {
    const a = worst.get(d.device);
    return a ? a.severity || "none" : "ok";
  };
  const rank = (d) => (worst.has(d.device) ? severityRank(severity(d)) : SEVERITY_ORDER.length);
  clear(el);
  if (devices.length === 0) el.append(h("p", { class: "muted" }, "No devices with alerts (set [console] devices_sql to list every device)."));
  const redraw = () => drawGrid(el, devices, worst, groupBy, label, open);
  const toggle = (g) => {
    if (open.groups.has(g)) open.groups.delete(g);
    else open.groups.add(g);
    redraw();
  };
  for (const [g, list] of [...groups.entries()].sort()) {
    // Every device fits: by name, so a device keeps its place. Past the
    // limit: worst first, so the ones drawn are the ones that matter.
    list.sort(big ? (a, b) => rank(a) - rank(b) || a.device.localeCompare(b.device) : (a, b) => a.device.localeCompare(b.device));
    const isOpen = !big || !groupBy || open.groups.has(g);
    if (groupBy) {
      const counts = new Map();
      for (const d of list) counts.set(severity(d), (counts.get(severity(d)) || 0) + 1);
      const head = [
        big ? (isOpen ? "▾ " : "▸ ") : "",
        groupBy + " = " + g,
        big ? " · " + list.length.toLocaleString() + " devices " : " ",
        [...counts.entries()]
          .sort((a, b) => (a[0] === "ok") - (b[0] === "ok") || severityRank(a[0]) - severityRank(b[0]))
          .map(([s, n]) => (big || s !== "ok" ? h("span", { class: "badge sev-" + s, dataset: { severity: s } }, n.toLocaleString() + " " + s) : null)),
      ];
      add(
        el,
        big
          ? h("h3", {
              class: "group-head", tabindex: "0", role: "button", "aria-expanded": String(isOpen), dataset: { group: g },
              onclick: () => toggle(g),
              onkeydown: (ev) => {
                if (ev.key === "Enter" || ev.key === " ") {
                  ev.preventDefault();
                  toggle(g);
                }
              },
            }, head)
          : h("h3", {}, head),
      );
    }
    if (!isOpen) continue;
    const shown = big ? open.shown.get(g) || GRID_CELLS : list.length;
    add(
      el,
      h(
        "div",
        { class: "grid" },
        list.slice(0, shown).map((d) => {
          const a = worst.get(d.device);
          const sev = severity(d);
          return h(
            "a",
            {
              class: "cell sev-" + sev,
              title: d.device + (a ? ": " + a.alertname + " " + sev : ": ok") + (d.unlisted ? " (not in devices_sql)" : ""),
              href: "/alerts?" + new URLSearchParams({ [label]: d.device }),
              dataset: { device: d.device, severity: sev },
            },
            d.device,
          );
        }),
      ),
    );
    if (shown < list.length) {
      const rest = list.slice(shown);
      const troubled = rest.filter((d) => worst.has(d.device)).length;
      add(
        el,
        h("p", { class: "muted more" },
          (list.length - shown).toLocaleString() + " more" + (troubled ? " (" + troubled.toLocaleString() + " with alerts)" : ", all ok") + " ",
          h("button", { class: "show-more", dataset: { group: g }, onclick: () => {
            open.shown.set(g, shown + GRID_CELLS);
            redraw();
          } }, "show " + Math.min(GRID_CELLS, list.length - shown).toLocaleString() + " more"),
        ),
      );
    }
  }
}

async function drawTrend(el, chart) {
  let rows;
  try {
    rows = await sql(
      "SELECT date_trunc('hour', ts) AS hour, count(*) AS fired FROM system.alert_history " +
        "WHERE to_state = " + quote("firing") + " AND ts >= date_trunc('day', now()) GROUP BY 1 ORDER BY 1",
    );
  } catch (e) {
    fill(el, h("h2", {}, "Alerts fired today"), h("p", { class: "error" }, e.message));
    return null;
  }
  if (chart) chart.destroy();
  const total = rows.reduce((n, r) => n + r.fired, 0);
  const target = h("div", { class: "chart" });
  fill(el, h("h2", {}, "Alerts fired today: " + total), target);
  const day = new Date();
  day.setUTCHours(0, 0, 0, 0);
  const from = day.getTime();
  return timeChart(target, rows, "hour", [{ column: "fired", label: "fired per hour" }], { bars: true, height: 160, from, to: from + 86400e3 });
}

async function drawPanels(el, panels) {
  const cards = await Promise.all(
    panels.map(async (p) => {
      const card = h("div", { class: "card panel" }, h("h2", {}, p.title));
      try {
        const rows = await sql(p.sql, p.database);
        const cols = rows.length ? Object.keys(rows[0]) : [];
        const labelCol = cols.find((c) => typeof rows[0][c] === "string") || cols[0];
        const valueCol = cols.find((c) => typeof rows[0][c] === "number");
        const max = Math.max(1e-9, ...rows.map((r) => Math.abs(Number(r[valueCol]) || 0)));
        card.append(
          rows.length === 0
            ? h("p", { class: "muted" }, "no rows")
            : h(
                "div",
                { class: "bars" },
                rows.slice(0, 50).map((r) => {
                  const bar = h("span", { class: "bar" });
                  bar.style.width = (100 * Math.abs(Number(r[valueCol]) || 0)) / max + "%";
                  return h("div", { class: "barrow" }, h("span", { class: "barlabel" }, String(r[labelCol])), h("span", { class: "bartrack" }, bar), h("span", { class: "num" }, fmt(r[valueCol])));
                }),
              ),
        );
      } catch (e) {
        card.append(h("p", { class: "error" }, e.message));
      }
      return card;
    }),
  );
  fill(el, ...cards);
}

function fmt(v) {
  return typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)) : String(v);
}

export { SEVERITY_ORDER };
