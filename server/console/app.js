// The console's shell: the API client, login, the router that maps each
// address to its view, and the small DOM helpers every view uses.
// Pages are built with DOM calls (never innerHTML with data), so nothing a
// label, a log line or an annotation holds can become markup.

const TOKEN_KEY = "tocsin.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

/// A call of the HTTP API as the logged-in person; JSON in and out.
export async function api(method, path, body, opts) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  if (opts && opts.signal) init.signal = opts.signal;
  const r = await fetch(path, init);
  const text = await r.text();
  if (r.status === 401) {
    showLogin(token() ? "Your session has ended: log in again." : "Log in to continue.");
    throw new ApiError(401, errorText(text));
  }
  if (!r.ok) throw new ApiError(r.status, errorText(text) || r.statusText);
  if (opts && opts.raw) return text;
  return text ? JSON.parse(text) : null;
}

function errorText(text) {
  try {
    const v = JSON.parse(text);
    if (v && typeof v.error === "string") return v.error;
    if (typeof v === "string") return v;
  } catch (_) {
    /* not JSON */
  }
  return text;
}

/// Runs one SQL statement; the rows as objects keyed by column. The
/// server refuses it if it writes (`read_only`), unless `writes` says the
/// person typed it and pressed Run: a statement that arrives in a link
/// (`/explore?q=INSERT ...`) must not write on their behalf.
export function sql(statement, database, writes) {
  const body = { sql: statement, format: "json", read_only: !writes };
  if (database) body.database = database;
  return api("POST", "/api/v1/sql", body);
}

/// A long-lived GET whose answer is read as it arrives (the live tail's
/// Server-Sent Events), with the token in a header, which EventSource
/// cannot send. Calls `onEvent(data)` per event; resolves when the stream
/// ends, rejects on an error answer.
export async function stream(path, onEvent, signal) {
  const r = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (r.status === 401) {
    showLogin(token() ? "Your session has ended: log in again." : "Log in to continue.");
    throw new ApiError(401, "unauthenticated");
  }
  if (!r.ok) throw new ApiError(r.status, errorText(await r.text()));
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const data = block
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) onEvent(data);
    }
  }
}

// ---- DOM helpers -------------------------------------------------------

/// `h("a", {href: "/x", class: "c", onclick: f}, "text", child)`.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/// Appends children as `h` does (arrays flattened; null, undefined and
/// false skipped, where `Element.append` would write "null").
export function add(el, ...children) {
  append(el, children);
  return el;
}

/// Replaces an element's children.
export function fill(el, ...children) {
  return add(clear(el), ...children);
}

export function toast(message, kind) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.className = kind || "error";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 6000);
}

/// "3m ago", "in 5m": relative to now.
export function ago(iso) {
  if (!iso) return "";
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) return iso;
  const d = Date.now() - ms;
  const span = duration(Math.abs(d));
  return d >= 0 ? span + " ago" : "in " + span;
}

export function duration(ms) {
  if (ms < 1000) return Math.round(ms) + "ms";
  const s = Math.round(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60 ? (s % 60) + "s" : "");
  if (s < 86400) return Math.floor(s / 3600) + "h" + (Math.floor(s / 60) % 60 ? (Math.floor(s / 60) % 60) + "m" : "");
  return Math.floor(s / 86400) + "d" + (Math.floor(s / 3600) % 24 ? (Math.floor(s / 3600) % 24) + "h" : "");
}

export function labelText(labels) {
  return Object.entries(labels || {})
    .map(([k, v]) => k + "=" + v)
    .join(", ");
}

/// A string as an SQL literal.
export function quote(s) {
  return "'" + String(s).replace(/'/g, "''") + "'";
}

export const SEVERITY_ORDER = ["critical", "error", "major", "warning", "minor", "info", "none"];

export function severityRank(s) {
  const i = SEVERITY_ORDER.indexOf(s || "none");
  return i < 0 ? SEVERITY_ORDER.length - 1 : i;
}

/// A list that renders only the rows in view, so 10,000 alerts or log
/// lines stay fast: `rows` is an array, `render(row)` makes one element of
/// fixed height `rowHeight`.
export class VirtualList {
  constructor(rowHeight, render) {
    this.rowHeight = rowHeight;
    this.render = render;
    this.rows = [];
    this.el = h("div", { class: "vlist" });
    this.spacer = h("div", { class: "vlist-spacer" });
    this.window = h("div", { class: "vlist-window" });
    this.el.append(this.spacer, this.window);
    this.el.addEventListener("scroll", () => this.draw());
    this.stick = false;
  }
  set(rows) {
    const atBottom = this.el.scrollTop + this.el.clientHeight >= this.el.scrollHeight - this.rowHeight;
    this.rows = rows;
    this.spacer.style.height = rows.length * this.rowHeight + "px";
    if (this.stick && atBottom) this.el.scrollTop = this.el.scrollHeight;
    this.draw();
  }
  draw() {
    const first = Math.max(0, Math.floor(this.el.scrollTop / this.rowHeight) - 5);
    const count = Math.ceil((this.el.clientHeight || 600) / this.rowHeight) + 10;
    clear(this.window);
    this.window.style.transform = "translateY(" + first * this.rowHeight + "px)";
    for (const row of this.rows.slice(first, first + count)) {
      const el = this.render(row);
      el.style.height = this.rowHeight + "px";
      this.window.append(el);
    }
  }
}

// ---- session, login ----------------------------------------------------

export const session = { user: null, config: null, auth: false };

export function can(permission) {
  return !!(session.user && session.user.permissions.includes(permission));
}

function showLogin(reason) {
  if (document.getElementById("login")) return;
  stopView();
  const view = clear(document.getElementById("view"));
  const user = h("input", { name: "user", autocomplete: "username", placeholder: "user" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", placeholder: "password" });
  const apiToken = h("input", { name: "token", placeholder: "or an API token (tocsin_...)" });
  const message = h("p", { class: "error" }, reason);
  const form = h(
    "form",
    { id: "login", class: "card login" },
    h("h2", {}, "Log in to Tocsin"),
    message,
    h("label", {}, "User", user),
    h("label", {}, "Password", password),
    h("label", {}, "API token", apiToken),
    h("button", { type: "submit" }, "Log in"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      if (apiToken.value.trim()) {
        sessionStorage.setItem(TOKEN_KEY, apiToken.value.trim());
      } else {
        const r = await fetch("/api/v1/login", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ user: user.value, password: password.value }),
        });
        const text = await r.text();
        if (!r.ok) throw new Error(errorText(text));
        sessionStorage.setItem(TOKEN_KEY, JSON.parse(text).token);
      }
      form.remove();
      await start();
    } catch (e) {
      message.textContent = e.message;
    }
  });
  view.append(form);
  user.focus();
}

async function logout() {
  try {
    await api("POST", "/api/v1/logout", {});
  } catch (_) {
    /* the session may be gone already */
  }
  sessionStorage.removeItem(TOKEN_KEY);
  session.user = null;
  document.getElementById("who").textContent = "";
  document.getElementById("logout").hidden = true;
  showLogin("Logged out.");
}

// A page restored from the browser's back/forward cache after logging out
// would still show what it showed: ask again instead.
window.addEventListener("pageshow", (ev) => {
  if (ev.persisted) location.reload();
});

// ---- router ------------------------------------------------------------

const VIEWS = {
  "": "overview",
  alerts: "alerts",
  rules: "rules",
  explore: "explore",
  logs: "logs",
  trace: "trace",
  audit: "audit",
};

let current = null; // { stop }

function stopView() {
  if (current && current.stop) current.stop();
  current = null;
}

export function navigate(url) {
  history.pushState(null, "", url);
  route();
}

async function route() {
  stopView();
  const path = location.pathname.replace(/\/+$/, "");
  const first = path.split("/")[1] || "";
  const name = VIEWS[first];
  const view = clear(document.getElementById("view"));
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
  if (!name) {
    view.append(h("p", { class: "error" }, "No view at " + location.pathname));
    return;
  }
  const params = new URLSearchParams(location.search);
  document.body.classList.toggle("wall", params.get("wall") === "1");
  document.title = "Tocsin · " + name;
  try {
    const mod = await import("/console/" + name + ".js");
    const mine = { stop: null };
    current = mine;
    const rest = path.split("/").slice(2).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch (_) {
        return p; // a malformed escape: shown as it is
      }
    });
    const stop = await mod.mount(view, { params, path, rest });
    if (current === mine) mine.stop = stop;
    else if (stop) stop();
  } catch (e) {
    if (e.status !== 401) view.append(h("p", { class: "error" }, String(e.message || e)));
  }
}

async function start() {
  const s = await api("GET", "/api/v1/console");
  session.user = s.user;
  session.config = s.config;
  session.auth = s.auth;
  const who = document.getElementById("who");
  who.textContent = s.auth ? s.user.name + " (" + s.user.role + ")" : "authentication off";
  document.getElementById("logout").hidden = !s.auth;
  // Only the views the role can use are offered (the server refuses the rest anyway).
  for (const a of document.querySelectorAll("#nav a[data-perm]")) a.hidden = !can(a.dataset.perm);
  // An auditor (no alerts) starts on the first view the role can use.
  if (location.pathname === "/" && !can("read_alerts")) {
    const first = document.querySelector(can("audit") ? "#nav a[data-view=audit]" : "#nav a[data-perm]:not([hidden])");
    if (first) history.replaceState(null, "", first.getAttribute("href"));
  }
  await route();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a");
  if (!a || a.target || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/") || url.pathname.startsWith("/console/")) return;
  ev.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", route);
document.getElementById("logout").addEventListener("click", logout);
start().catch((e) => {
  if (e.status !== 401) clear(document.getElementById("view")).append(h("p", { class: "error" }, String(e.message || e)));
});
