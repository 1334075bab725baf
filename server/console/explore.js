// Explore: an SQL editor with table and column completion, results as a
// table and as a time-series chart (a series per value column and per
// combination of text columns; zoom by dragging, values on hover), CSV
// download, a time range the statement can use ($from, $to), and an
// address that holds the statement and range (shareable).

import { api, sql, h, clear, fill, add, toast, navigate, VirtualList } from "/console/app.js";

const RANGES = { "15m": 15 * 60e3, "1h": 3600e3, "6h": 6 * 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const MAX_SERIES = 50;
const PALETTE = ["#2f7ed8", "#d9534f", "#5cb85c", "#f0ad4e", "#8e44ad", "#16a085", "#e67e22", "#34495e", "#c0392b", "#7f8c8d"];

export async function mount(view, ctx) {
  const params = ctx.params;
  const editor = h("textarea", { id: "sql", rows: "6", spellcheck: "false" }, params.get("q") || "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns WHERE table_schema <> 'information_schema'");
  const range = h("select", { id: "range" }, Object.keys(RANGES).map((r) => h("option", { value: r, selected: r === (params.get("range") || "1h") }, "last " + r)));
  const db = h("input", { id: "database", placeholder: "database (public)", value: params.get("db") || "" });
  const run = h("button", { id: "run", onclick: () => go(true) }, "Run (Ctrl+Enter)");
  const csv = h("button", { id: "csv", onclick: () => download() }, "CSV");
  const suggest = h("div", { class: "suggest", id: "suggest" });
  const status = h("span", { class: "muted", id: "status" });
  const chartEl = h("div", { class: "chart", id: "chart" });
  const tableEl = h("div", { id: "result" });
  view.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Explore"), range, db, run, csv, status),
    h("div", { class: "editor" }, editor, suggest),
    h("p", { class: "muted" }, "$from and $to stand for the chosen range's ends (timestamps). Drag on the chart to zoom; double-click to zoom out."),
    chartEl,
    tableEl,
  );
  let chart = null;
  const names = await completions();
  editor.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      go(true);
    } else if (e.key === "Tab" && suggest.firstChild) {
      e.preventDefault();
      accept(suggest.firstChild.textContent);
    }
  });
  editor.addEventListener("input", () => {
    const word = currentWord();
    clear(suggest);
    if (word.length < 2) return;
    const w = word.toLowerCase();
    for (const n of names.filter((n) => n.toLowerCase().startsWith(w) && n.length > w.length).slice(0, 8)) {
      suggest.append(h("button", { type: "button", class: "suggestion", onclick: () => accept(n) }, n));
    }
  });
  function currentWord() {
    const before = editor.value.slice(0, editor.selectionStart);
    const m = /[A-Za-z_][A-Za-z0-9_.]*$/.exec(before);
    return m ? m[0] : "";
  }
  function accept(name) {
    const at = editor.selectionStart;
    const word = currentWord();
    editor.value = editor.value.slice(0, at - word.length) + name + editor.value.slice(at);
    editor.selectionStart = editor.selectionEnd = at - word.length + name.length;
    clear(suggest);
    editor.focus();
  }
  function statement() {
    const to = Date.now();
    const from = to - RANGES[range.value];
    const lit = (ms) => "TIMESTAMP '" + new Date(ms).toISOString() + "'";
    return { text: editor.value.replace(/\$from\b/g, lit(from)).replace(/\$to\b/g, lit(to)), from, to };
  }
  /// `typed`: the person pressed Run. A statement from the address (a
  /// shared link) runs read-only: one that writes waits for Run.
  async function go(typed) {
    const p = new URLSearchParams({ q: editor.value, range: range.value });
    if (db.value) p.set("db", db.value);
    history.replaceState(null, "", "/explore?" + p);
    const { text, from, to } = statement();
    status.textContent = "running…";
    const started = performance.now();
    try {
      const rows = await sql(text, db.value || undefined, typed);
      status.textContent = rows.length + (rows.length === 1 ? " row" : " rows") + " in " + Math.round(performance.now() - started) + " ms";
      if (chart) chart.destroy();
      chart = timeChart(chartEl, rows, null, null, /\$from\b/.test(editor.value) ? { from, to } : {});
      renderTable(tableEl, rows);
    } catch (e) {
      status.textContent = "";
      clear(chartEl);
      const writes = !typed && /read-only/.test(e.message);
      fill(
        tableEl,
        h("pre", { class: "error", id: "sql-error" }, writes ? "This statement writes. It came with the link, so it did not run: read it, then press Run to run it." : e.message),
      );
    }
  }
  async function download() {
    try {
      const body = { sql: statement().text, format: "csv", read_only: true };
      if (db.value) body.database = db.value;
      const text = await api("POST", "/api/v1/sql", body, { raw: true });
      const a = h("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: "tocsin-result.csv" });
      document.body.append(a);
      a.click();
      a.remove();
    } catch (e) {
      if (e.status !== 401) toast(e.message);
    }
  }
  if (params.get("q")) await go(false);
  return () => chart && chart.destroy();
}

/// Table, column and function names for completion.
async function completions() {
  const names = new Set(["SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "LIMIT", "date_bin", "date_trunc", "matches", "last_value", "count", "avg", "max", "min", "sum", "now()"]);
  try {
    const rows = await sql("SELECT table_schema, table_name, column_name FROM information_schema.columns WHERE table_schema <> 'information_schema' LIMIT 20000");
    for (const r of rows) {
      names.add(r.table_name);
      names.add(r.column_name);
      if (r.table_schema !== "public") names.add(r.table_schema + "." + r.table_name);
    }
  } catch (_) {
    /* completion is a help; the editor works without it */
  }
  return [...names].sort();
}

function renderTable(el, rows) {
  clear(el);
  if (rows.length === 0) {
    el.append(h("p", { class: "muted" }, "no rows"));
    return;
  }
  const cols = Object.keys(rows[0]);
  const header = h("div", { class: "row head" }, cols.map((c) => h("span", {}, c)));
  const list = new VirtualList(26, (r) => h("div", { class: "row" }, cols.map((c) => h("span", {}, r[c] === null ? "NULL" : String(r[c])))));
  el.append(header, list.el);
  list.el.classList.add("result-rows");
  list.set(rows);
  header.style.gridTemplateColumns = list.el.style.gridTemplateColumns = "";
  el.style.setProperty("--cols", cols.length);
}

const TIME_NAMES = ["ts", "time", "timestamp", "hour", "minute", "day", "bucket", "t"];

function isTime(v) {
  return typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v);
}

/// Draws rows as time series with uPlot: the time column (named, or the
/// first whose values are times), one series per numeric column and per
/// combination of the text columns' values. Returns the chart (or null
/// when the rows have no time and number to draw).
export function timeChart(target, rows, timeCol, values, opts) {
  clear(target);
  if (!rows.length || typeof uPlot === "undefined") return null;
  const cols = Object.keys(rows[0]);
  const t = timeCol || cols.find((c) => TIME_NAMES.includes(c.toLowerCase()) && isTime(rows[0][c])) || cols.find((c) => isTime(rows[0][c]));
  if (!t) return null;
  const numeric = values ? values.map((v) => v.column) : cols.filter((c) => c !== t && rows.some((r) => typeof r[c] === "number"));
  if (!numeric.length) return null;
  const keys = cols.filter((c) => c !== t && !numeric.includes(c) && rows.some((r) => typeof r[c] === "string"));
  const series = new Map(); // name -> Map(time -> value)
  const times = new Set();
  for (const r of rows) {
    const x = Date.parse(r[t]) / 1000;
    if (Number.isNaN(x)) continue;
    times.add(x);
    const key = keys.map((k) => k + "=" + r[k]).join(", ");
    for (const c of numeric) {
      const name = (values && values.find((v) => v.column === c)?.label) || (key ? (numeric.length > 1 ? c + " " : "") + "{" + key + "}" : c);
      if (!series.has(name)) {
        if (series.size >= MAX_SERIES) continue;
        series.set(name, new Map());
      }
      series.get(name).set(x, typeof r[c] === "number" ? r[c] : null);
    }
  }
  const xs = [...times].sort((a, b) => a - b);
  const data = [xs, ...[...series.values()].map((m) => xs.map((x) => (m.has(x) ? m.get(x) : null)))];
  const width = Math.max(300, target.clientWidth || 900);
  const bars = opts && opts.bars;
  const chart = new uPlot(
    {
      width,
      height: (opts && opts.height) || 300,
      cursor: { drag: { x: true, y: false } },
      scales: { x: opts && opts.from ? { time: true, range: [opts.from / 1000, opts.to / 1000] } : { time: true } },
      series: [
        {},
        ...[...series.keys()].map((name, i) => ({
          label: name,
          stroke: PALETTE[i % PALETTE.length],
          fill: bars ? PALETTE[i % PALETTE.length] + "88" : undefined,
          width: 1.5,
          spanGaps: false,
          paths: bars ? uPlot.paths.bars({ size: [0.8, 40] }) : undefined,
          points: { show: xs.length < 60 },
        })),
      ],
    },
    data,
    target,
  );
  target.dataset.series = String(series.size);
  return chart;
}

export { navigate };
