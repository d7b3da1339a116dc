// Purser's operator console. Served by the Query API (GET /console), it
// reads the operator-only endpoints of both APIs on its own origin (the
// gateway sends GETs to the Query API and POSTs to the Command API) with the
// token kept in this tab's session storage, and follows GET /console/events
// (server-sent events, read with fetch so that the token goes in a header).
// No framework, no build step: the DOM is built with textContent only.
"use strict";

const TOKEN_KEY = "purser.console.token";
const PROJECTION_NAMES = ["accounts", "inventory", "orders", "sagas"];
const SAGA_STATES = ["needs_attention", "running", "compensating", "completed", "compensated"];
const COMPENSATIONS = ["cancel_shipment", "refund_payment", "release_stock", "cancel_order"];
const SAGA_PAGE = 20;
const LEDGER_PAGE = 20;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const fmt = new Intl.NumberFormat();
const num = (n) => (n === null || n === undefined ? "-" : fmt.format(n));
function money(minor, currency) {
  if (minor === null || minor === undefined) return "-";
  const sign = minor < 0 ? "-" : "";
  const abs = Math.abs(minor);
  return `${sign}${fmt.format(Math.floor(abs / 100))}.${String(abs % 100).padStart(2, "0")} ${currency || ""}`.trim();
}
function when(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}
function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "-";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
const badge = (text, kind) => h("span", { class: `badge ${kind || text}`, "data-field": "status" }, text.replaceAll("_", " "));

function toast(message, isError) {
  const el = $("toast");
  el.textContent = message;
  el.className = isError ? "toast error" : "toast";
  el.setAttribute("role", isError ? "alert" : "status");
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, isError ? 10000 : 5000);
}

// ---------------------------------------------------------------------------
// The token and the API

let token = null;

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.code = problem && problem.code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let payload = null;
  try { payload = await response.json(); } catch (_) { payload = null; }
  if (!response.ok) {
    const error = new ApiError(response.status, payload);
    if (response.status === 401 && method === "GET") signOut(refusal(error));
    throw error;
  }
  return payload;
}
const get = (path) => api("GET", path);
const post = (path, body) => api("POST", path, body || {});

/// What the sign-in form says of a refused token.
function refusal(error) {
  if (error.status === 403) {
    return "This token is not an operator's (a customer token?): the console needs a token with the operator role.";
  }
  if (error.status === 401) {
    return `This token was refused (${error.code || "invalid_token"}): it may be expired, or signed by another key. ${error.message}`;
  }
  return `The console could not check the token: ${error.message}`;
}

/// The claims of a JWT, unverified: only to show who is signed in.
function claims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch (_) {
    return {};
  }
}

async function signIn(candidate) {
  const error = $("sign-in-error");
  error.textContent = "";
  token = candidate.trim();
  if (!token) return;
  try {
    // An operator-only read: a customer's token is 403, a bad one 401.
    await api("GET", "/projections");
  } catch (e) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    error.textContent = e instanceof ApiError ? refusal(e) : `The console could not reach Purser: ${e.message}`;
    $("token").focus();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  const sub = claims(token).sub;
  $("who").textContent = sub ? `signed in as ${sub}` : "signed in";
  $("who").hidden = false;
  $("sign-out").hidden = false;
  $("sign-in").hidden = true;
  $("console").hidden = false;
  $("token").value = "";
  startLive();
  refreshAll();
}

function signOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  stopLive();
  $("console").hidden = true;
  $("sign-in").hidden = false;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in-error").textContent = message || "";
  setLive("off", "not connected");
  $("token").focus();
}

// ---------------------------------------------------------------------------
// Live: GET /console/events, read with fetch (EventSource sends no header)

let live = null;

function setLive(state, text) {
  const el = $("live");
  el.dataset.state = state;
  el.textContent = text;
}

function startLive() {
  stopLive();
  const controller = new AbortController();
  live = controller;
  follow(controller.signal);
}

function stopLive() {
  if (live) live.abort();
  live = null;
}

async function follow(signal) {
  let backoff = 1000;
  while (!signal.aborted) {
    try {
      const response = await fetch("/console/events", {
        headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
        cache: "no-store",
        signal,
      });
      if (response.status === 401 || response.status === 403) {
        signOut(refusal(new ApiError(response.status, await response.json().catch(() => null))));
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          dispatch(block);
          backoff = 1000;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    if (signal.aborted) return;
    setLive("reconnecting", "connection lost: reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

/// One server-sent event: `event:` and `data:` lines (comments ignored).
function dispatch(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (event === "ready") {
    setLive("live", "live");
    // Whatever moved while disconnected.
    refreshAll();
  } else if (event === "change") {
    setLive("live", "live");
    let moved = PROJECTION_NAMES;
    try { moved = JSON.parse(data.join("\n")).projections || PROJECTION_NAMES; } catch (_) { /* all */ }
    changed(moved);
  }
}

/// Re-reads what is on screen of the projections that moved.
function changed(moved) {
  refresh.projections();
  if (moved.includes("sagas")) {
    refresh.sagaCounts();
    refresh.sagaList();
    refresh.sagaDetail();
  }
  if (moved.includes("orders")) refresh.sagaDetail();
  const kind = lookupShown && lookupShown.kind;
  if ((kind === "account" && moved.includes("accounts"))
      || (kind === "order" && moved.includes("orders"))
      || (kind === "item" && moved.includes("inventory"))) {
    refresh.lookup();
  }
}

/// `fn` at most once at a time; a call while it runs runs it again after.
function serial(fn) {
  let running = null;
  let again = false;
  const run = async () => {
    if (running) { again = true; return running; }
    running = (async () => {
      do {
        again = false;
        try { await fn(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) console.warn(e); }
      } while (again && token);
    })();
    try { await running; } finally { running = null; }
  };
  return run;
}

const refresh = {};

function refreshAll() {
  refresh.projections();
  refresh.sagaCounts();
  refresh.sagaList();
  refresh.sagaDetail();
  refresh.lookup();
}

// ---------------------------------------------------------------------------
// Confirmation

/// Asks before an action; with `typed`, the user must type it first.
function confirmAction({ title, text, action, typed }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = action;
  const input = $("confirm-typed");
  const row = $("confirm-typed-row");
  input.value = "";
  row.hidden = !typed;
  $("confirm-name").textContent = typed || "";
  $("confirm-ok").disabled = Boolean(typed);
  input.oninput = () => { $("confirm-ok").disabled = input.value !== typed; };
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(dialog.returnValue === "ok" && (!typed || input.value === typed));
    dialog.returnValue = "cancel";
    dialog.showModal();
    (typed ? input : $("confirm-cancel")).focus();
  });
}

async function act(confirmation, request, done) {
  if (!(await confirmAction(confirmation))) return;
  try {
    const result = await request();
    toast(done(result));
  } catch (e) {
    toast(`${confirmation.action} failed: ${e.message}${e.code ? ` (${e.code})` : ""}`, true);
  }
  refresh.projections();
}

// ---------------------------------------------------------------------------
// Projections

/// Previous figures per projection, for rates: {at, applied, done}.
const samples = new Map();
let projectionRows = [];

function rate(previous, now, value, key) {
  if (!previous) return null;
  const seconds = (now - previous.at) / 1000;
  if (seconds <= 0) return previous[`${key}Rate`] ?? null;
  return Math.max(0, (value - previous[key]) / seconds);
}

refresh.projections = serial(async () => {
  const rows = await get("/projections");
  const now = Date.now();
  for (const p of rows) {
    const previous = samples.get(p.name);
    const done = p.rebuild ? p.rebuild.events_done : 0;
    let sample = previous;
    // A rate over at least a second of figures.
    if (!previous || now - previous.at >= 1000) {
      sample = {
        at: now,
        applied: p.events_applied,
        done,
        appliedRate: rate(previous, now, p.events_applied, "applied"),
        doneRate: previous && previous.done <= done ? rate(previous, now, done, "done") : null,
      };
      samples.set(p.name, sample);
    }
    p.eventsPerSecond = sample.appliedRate;
    p.rebuildRate = sample.doneRate;
  }
  projectionRows = rows;
  renderProjections(rows);
  await renderParked(rows);
});

// Rates fall to 0 when nothing moved for a while (no request is made).
setInterval(() => {
  const now = Date.now();
  let stale = false;
  for (const sample of samples.values()) {
    if (now - sample.at > 5000 && (sample.appliedRate || sample.doneRate)) {
      sample.appliedRate = 0;
      sample.doneRate = null;
      stale = true;
    }
  }
  if (stale && projectionRows.length) {
    for (const p of projectionRows) {
      const s = samples.get(p.name);
      p.eventsPerSecond = s ? s.appliedRate : null;
    }
    renderProjections(projectionRows);
  }
}, 2500);

function rebuildCell(p) {
  const r = p.rebuild;
  if (!r) {
    if (p.rebuild_requested) {
      return h("span", { "data-field": "rebuild", "data-phase": "requested" },
        `requested by ${p.rebuild_requested.requested_by}, waiting for a worker`);
    }
    return h("span", { "data-field": "rebuild", "data-phase": "none", class: "muted" }, "-");
  }
  const total = Math.max(r.events_total || 0, r.events_done);
  const percent = total > 0 ? Math.floor((100 * r.events_done) / total) : 100;
  const eta = p.rebuildRate ? duration((total - r.events_done) / p.rebuildRate) : "-";
  const state = r.running ? r.phase.replace("_", "-") : `interrupted (${r.phase.replace("_", "-")})`;
  return h("div", { class: "rebuild", "data-field": "rebuild", "data-phase": r.running ? r.phase : "interrupted" },
    h("span", {}, state),
    h("progress", { max: total || 1, value: r.events_done, "aria-label": `${p.name} rebuild progress` }),
    h("span", { class: "muted" }, `${num(r.events_done)} / ${num(total)} events (${percent} %), ETA ${eta}`));
}

function renderProjections(rows) {
  const body = $("projection-table").tBodies[0];
  body.replaceChildren(...rows.map((p) => h("tr", { "data-projection": p.name },
    h("th", { scope: "row" }, p.name),
    h("td", {}, badge(p.status)),
    h("td", { class: "num", "data-field": "checkpoint" }, num(p.checkpoint)),
    h("td", { class: "num", "data-field": "head" }, num(p.head)),
    h("td", { class: "num", "data-field": "lag" }, num(p.lag_events)),
    h("td", { class: "num", "data-field": "rate" }, p.eventsPerSecond === null || p.eventsPerSecond === undefined ? "-" : num(Math.round(p.eventsPerSecond))),
    h("td", { class: "num", "data-field": "parked" }, num(p.parked_streams)),
    h("td", {}, rebuildCell(p)),
    h("td", { class: "actions" },
      h("button", {
        type: "button", "data-action": "rebuild", disabled: Boolean(p.rebuild && p.rebuild.running) || Boolean(p.rebuild_requested),
        onclick: () => act(
          { title: `Rebuild ${p.name}?`, action: "Rebuild",
            text: `The ${p.name} read model is rebuilt from the event store into new tables, swapped in at the end; reads go on from the current ones meanwhile.` },
          () => post(`/projections/${p.name}/rebuild`),
          (r) => `Rebuild of ${r.projection} requested by ${r.requested_by}.`),
      }, "Rebuild"),
      h("button", {
        type: "button", class: "danger", "data-action": "reset",
        onclick: () => act(
          { title: `Reset ${p.name}?`, action: "Reset", typed: p.name,
            text: `This empties the ${p.name} read model (its rows, parked streams and any interrupted rebuild). Reads of it find nothing until a rebuild refills it.` },
          () => post(`/projections/${p.name}/reset`, { confirm: p.name }),
          (r) => `${r.projection} was reset; rebuild it to refill it.`),
      }, "Reset")))));
}

async function renderParked(rows) {
  const holder = $("parked");
  const parked = rows.filter((p) => p.parked_streams > 0);
  const sections = [];
  for (const p of parked) {
    const list = await get(`/projections/${p.name}/parked?limit=100`);
    sections.push(h("div", { class: "parked", "data-parked-of": p.name },
      h("h3", {}, `Parked streams of ${p.name} (${num(list.total)})`,
        h("button", {
          type: "button", "data-action": "unpark-all",
          onclick: () => act(
            { title: `Unpark every stream of ${p.name}?`, action: "Unpark all",
              text: "Their waiting events are applied from the event store; a stream whose event still fails is parked again." },
            () => post(`/projections/${p.name}/unpark`, {}),
            (r) => unparked(r)),
        }, "Unpark all")),
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Stream"), h("th", { scope: "col", class: "num" }, "Version"),
          h("th", { scope: "col" }, "Event"), h("th", { scope: "col" }, "Error"),
          h("th", { scope: "col", class: "num" }, "Attempts"), h("th", { scope: "col" }, "Since"),
          h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")))),
        h("tbody", {}, list.items.map((s) => h("tr", { "data-stream": s.stream_id },
          h("td", { class: "mono" }, s.stream_id),
          h("td", { class: "num", "data-field": "version" }, num(s.version)),
          h("td", { class: "mono" }, s.event_id),
          h("td", { class: "error-text", "data-field": "error" }, s.error),
          h("td", { class: "num" }, num(s.attempts)),
          h("td", {}, when(s.parked_at)),
          h("td", {}, h("button", {
            type: "button", "data-action": "unpark",
            onclick: () => act(
              { title: `Unpark ${s.stream_id}?`, action: "Unpark",
                text: `Its waiting events are applied to ${p.name} from the event store; if its event still fails, it is parked again.` },
              () => post(`/projections/${p.name}/unpark`, { stream_id: s.stream_id }),
              (r) => unparked(r)),
          }, "Unpark")))))))));
  }
  holder.replaceChildren(...sections);
}

function unparked(r) {
  if (!r.streams.length) return `${r.projection}: no stream was parked.`;
  return r.streams.map((s) => `${s.stream_id}: ${s.applied} events applied${s.parked_again ? ", parked again" : ""}`).join("; ");
}

// ---------------------------------------------------------------------------
// Sagas

let sagaNext = null;
let sagaLoaded = 0;
let sagaShown = null;

refresh.sagaCounts = serial(async () => {
  const counts = await get("/sagas/counts");
  const current = $("saga-state").value;
  $("saga-counts").replaceChildren(...SAGA_STATES.map((state) => h("button", {
    type: "button", class: `count ${state}`, "data-state": state,
    "aria-pressed": String(current === state),
    onclick: () => { $("saga-state").value = state; sagaFilterChanged(); },
  }, h("span", { class: "figure", "data-field": "count" }, num(counts[state] || 0)), h("span", {}, state.replaceAll("_", " ")))));
});

async function sagaPage(after, limit) {
  const state = $("saga-state").value;
  const query = new URLSearchParams({ limit: String(limit) });
  if (state) query.set("state", state);
  if (after) query.set("after", after);
  return get(`/sagas?${query}`);
}

function sagaRow(s) {
  const attempts = s.steps.reduce((n, step) => n + step.attempts, 0);
  return h("tr", { "data-order": s.order_id, "data-state": s.state, class: sagaShown === s.order_id ? "selected" : "" },
    h("td", {}, h("button", { type: "button", class: "link mono", onclick: () => showSaga(s.order_id) }, s.order_id)),
    h("td", {}, badge(s.state)),
    h("td", { class: "error-text" }, s.error || ""),
    h("td", { class: "num" }, `${s.steps.length} (${attempts} attempts)`),
    h("td", {}, when(s.updated_at)));
}

/// Re-reads as many sagas as are shown (at least a page).
refresh.sagaList = serial(async () => {
  const want = Math.max(sagaLoaded, SAGA_PAGE);
  const page = await sagaPage(null, Math.min(want, 500));
  sagaLoaded = page.items.length;
  sagaNext = page.next;
  $("saga-table").tBodies[0].replaceChildren(...page.items.map(sagaRow));
  $("saga-empty").hidden = page.items.length > 0;
  $("saga-more").hidden = !sagaNext;
});

async function moreSagas() {
  if (!sagaNext) return;
  const page = await sagaPage(sagaNext, SAGA_PAGE);
  sagaLoaded += page.items.length;
  sagaNext = page.next;
  $("saga-table").tBodies[0].append(...page.items.map(sagaRow));
  $("saga-more").hidden = !sagaNext;
}

function sagaFilterChanged() {
  sagaLoaded = 0;
  refresh.sagaCounts();
  refresh.sagaList();
}

function showSaga(orderId) {
  sagaShown = orderId;
  for (const row of $("saga-table").tBodies[0].rows) row.classList.toggle("selected", row.dataset.order === orderId);
  refresh.sagaDetail().then(() => { const el = $("saga-detail"); if (!el.hidden) el.focus(); });
}

function step(s) {
  return h("li", { "data-step": s.name, "data-status": s.status },
    h("div", { class: "step-head" },
      h("strong", {}, s.name.replaceAll("_", " ")), s.sku ? h("span", { class: "mono" }, ` ${s.sku}`) : null, " ",
      badge(s.status)),
    h("div", { class: "muted" },
      h("span", { "data-field": "attempts" }, `${s.attempts} ${s.attempts === 1 ? "attempt" : "attempts"}`),
      `, started ${when(s.started_at)}`,
      s.finished_at ? `, finished ${when(s.finished_at)}` : ""),
    s.error ? h("div", { class: "error-text", "data-field": "error" }, s.error) : null);
}

refresh.sagaDetail = serial(async () => {
  const holder = $("saga-detail");
  if (!sagaShown) { holder.hidden = true; return; }
  const id = sagaShown;
  const [saga, order] = await Promise.all([
    get(`/sagas/${id}`).catch((e) => ({ missing: e.message })),
    get(`/orders/${id}`).catch((e) => ({ missing: e.message })),
  ]);
  if (sagaShown !== id) return;
  const forward = (saga.steps || []).filter((s) => !COMPENSATIONS.includes(s.name));
  const undo = (saga.steps || []).filter((s) => COMPENSATIONS.includes(s.name));
  holder.replaceChildren(
    h("div", { class: "detail-head" },
      h("h3", {}, "Order ", h("span", { class: "mono" }, id)),
      h("button", { type: "button", class: "quiet", onclick: () => { sagaShown = null; holder.hidden = true; refresh.sagaList(); } }, "Close")),
    h("div", { class: "columns" },
      h("div", { class: "timeline", id: "saga-timeline" },
        h("h4", {}, "Saga ", saga.state ? badge(saga.state) : null),
        saga.missing ? h("p", { class: "error-text" }, saga.missing) : null,
        saga.error ? h("p", {}, "Last error: ", h("span", { class: "error-text", "data-field": "saga-error" }, saga.error)) : null,
        saga.compensation_reason ? h("p", {}, `Compensating for: ${saga.compensation_reason}`) : null,
        saga.state === "needs_attention" ? h("button", {
          type: "button", id: "saga-retry", class: "primary",
          onclick: () => act(
            { title: "Retry this saga?", action: "Retry",
              text: "The step that stopped it gets a fresh retry budget, and the orchestrator resumes the saga." },
            () => post(`/sagas/${id}/retry`, {}),
            (r) => `Saga of ${r.order_id} retried: ${r.state}.`).then(() => refresh.sagaDetail()),
        }, "Retry") : null,
        h("ol", { class: "steps" }, forward.map(step)),
        undo.length ? h("h4", {}, "Compensations, in order") : null,
        undo.length ? h("ol", { class: "steps" }, undo.map(step)) : null),
      h("div", { class: "order", id: "saga-order" }, orderView(order))));
  holder.hidden = false;
});

function orderView(order) {
  if (order.missing) return h("p", { class: "error-text" }, order.missing);
  return h("div", { "data-order-view": order.order_id },
    h("h4", {}, "Order ", badge(order.status)),
    h("dl", { class: "facts" },
      h("dt", {}, "Total"), h("dd", { "data-field": "total" }, money(order.total, order.currency)),
      h("dt", {}, "Customer"), h("dd", { class: "mono" }, order.customer_id),
      h("dt", {}, "Account"), h("dd", { class: "mono" }, order.account_id),
      h("dt", {}, "Tracking number"), h("dd", { "data-field": "tracking" }, order.tracking_number || "-"),
      order.cancellation_reason ? [h("dt", {}, "Cancelled"), h("dd", {}, order.cancellation_reason)] : null,
      h("dt", {}, "Placed"), h("dd", {}, when(order.placed_at))),
    h("table", { class: "lines" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "SKU"), h("th", { scope: "col", class: "num" }, "Quantity"), h("th", { scope: "col", class: "num" }, "Unit price"))),
      h("tbody", {}, order.lines.map((l) => h("tr", {},
        h("td", { class: "mono" }, l.sku), h("td", { class: "num" }, num(l.quantity)), h("td", { class: "num" }, money(l.unit_price, order.currency)))))));
}

// ---------------------------------------------------------------------------
// Lookup

let lookupShown = null;

refresh.lookup = serial(async () => {
  if (!lookupShown) return;
  const { kind, id } = lookupShown;
  const holder = $("lookup-result");
  let view;
  try {
    if (kind === "account") view = await accountView(id);
    else if (kind === "order") view = h("div", {}, orderView(await get(`/orders/${encodeURIComponent(id)}`)),
      h("button", { type: "button", class: "quiet", onclick: () => { $("saga-state").value = ""; sagaFilterChanged(); showSaga(id); location.hash = "#sagas"; } }, "Show its saga"));
    else view = itemView(await get(`/inventory/${encodeURIComponent(id)}`));
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    view = h("p", { class: "error-text", "data-field": "lookup-error" }, e.status === 404 ? `No ${kind} ${id}.` : e.message);
  }
  if (lookupShown && lookupShown.kind === kind && lookupShown.id === id) holder.replaceChildren(view);
});

async function accountView(id) {
  const path = encodeURIComponent(id);
  const [account, ledger] = await Promise.all([
    get(`/accounts/${path}`),
    get(`/accounts/${path}/transactions?limit=${Math.max(lookupShown.ledgerLoaded || 0, LEDGER_PAGE)}`),
  ]);
  lookupShown.ledgerLoaded = ledger.items.length;
  const body = h("tbody", {}, ledger.items.map(ledgerRow(account.currency)));
  let next = ledger.next;
  const more = h("button", {
    type: "button", class: "quiet", hidden: !next,
    onclick: async () => {
      const page = await get(`/accounts/${path}/transactions?limit=${LEDGER_PAGE}&after=${next}`);
      body.append(...page.items.map(ledgerRow(account.currency)));
      lookupShown.ledgerLoaded += page.items.length;
      next = page.next;
      more.hidden = !next;
    },
  }, "More");
  return h("div", { "data-account": account.account_id },
    h("h3", {}, "Account ", h("span", { class: "mono" }, account.account_id), " ", badge(account.status)),
    h("dl", { class: "facts" },
      h("dt", {}, "Balance"), h("dd", { class: "figure", "data-field": "balance" }, money(account.balance, account.currency)),
      h("dt", {}, "Customer"), h("dd", { class: "mono" }, account.customer_id),
      h("dt", {}, "Version"), h("dd", { "data-field": "version" }, num(account.version)),
      h("dt", {}, "Updated"), h("dd", {}, when(account.updated_at))),
    h("h4", {}, "Ledger"),
    h("div", { class: "table-wrap" }, h("table", { id: "ledger" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "num" }, "#"), h("th", { scope: "col" }, "Kind"),
        h("th", { scope: "col", class: "num" }, "Amount"), h("th", { scope: "col", class: "num" }, "Balance after"),
        h("th", { scope: "col" }, "Order"), h("th", { scope: "col" }, "At"))),
      body)),
    more);
}

const ledgerRow = (currency) => (t) => h("tr", { "data-seq": t.seq, "data-kind": t.kind },
  h("td", { class: "num" }, t.seq), h("td", {}, t.kind),
  h("td", { class: "num", "data-field": "amount" }, money(t.amount, currency)),
  h("td", { class: "num" }, money(t.balance_after, currency)),
  h("td", { class: "mono" }, t.order_id || ""), h("td", {}, when(t.at)));

function itemView(item) {
  return h("div", { "data-item": item.sku },
    h("h3", {}, "Item ", h("span", { class: "mono" }, item.sku), ` ${item.name}`),
    h("dl", { class: "facts" },
      h("dt", {}, "On hand"), h("dd", { "data-field": "on_hand" }, num(item.on_hand)),
      h("dt", {}, "Reserved"), h("dd", { "data-field": "reserved" }, num(item.reserved)),
      h("dt", {}, "Available"), h("dd", { "data-field": "available" }, num(item.available)),
      h("dt", {}, "Unit price"), h("dd", {}, item.unit_price === null ? "not priced" : money(item.unit_price, item.currency)),
      h("dt", {}, "Version"), h("dd", {}, num(item.version))));
}

// ---------------------------------------------------------------------------
// Start

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value); });
  $("token").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); signIn($("token").value); }
  });
  $("sign-out").addEventListener("click", () => signOut("Signed out: the token is forgotten."));
  $("saga-state").addEventListener("change", sagaFilterChanged);
  $("saga-more").addEventListener("click", moreSagas);
  $("lookup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("lookup-id").value.trim();
    if (!id) return;
    lookupShown = { kind: $("lookup-kind").value, id, ledgerLoaded: 0 };
    $("lookup-result").replaceChildren(h("p", { class: "muted" }, "Looking up…"));
    refresh.lookup();
  });

  // The same link opened in this tab again only changes the fragment.
  window.addEventListener("hashchange", () => {
    const linked = tokenFromFragment();
    if (linked) signIn(linked);
  });
  const candidate = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
  if (candidate) signIn(candidate);
  else $("token").focus();
});

/// A link from scripts/up carries the token in the fragment, which no
/// server sees; it is taken out of the address (and kept in session
/// storage once it signs in).
function tokenFromFragment() {
  const linked = new URLSearchParams(location.hash.slice(1)).get("token");
  if (linked) history.replaceState(null, "", location.pathname + location.search);
  return linked;
}
