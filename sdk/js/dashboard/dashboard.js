// The runwire dashboard (served by the engine at /dashboard; no build step): log in with the
// API key (kept in sessionStorage, never in a URL), the runs list (live), a run's page with
// its payload, output, error and metadata, every output stream live and in full (windowed:
// only the rows in view are in the DOM, so a 100,000-chunk stream stays responsive), a send
// form for input streams, a cancel button and a public-token maker. docs/browser.md.
import {
  RunwireError, cancelRun, createToken, listRuns, sendInput, subscribeToRunEvents,
} from "/v1/js/runwire.js";

const KEY = "runwire.apiKey";
const main = document.getElementById("main");
const where = document.getElementById("where");
const logout = document.getElementById("logout");
// runwire.RunStatus; the last five are final
const FINISHED = new Set(["COMPLETED", "FAILED", "CANCELED", "CRASHED", "TIMED_OUT"]);
const STATUSES = ["QUEUED", "EXECUTING", "WAITING", ...FINISHED];
/** What the current view started; stopped when the view changes. */
let viewAbort = new AbortController();

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function credentials() {
  return { accessToken: sessionStorage.getItem(KEY) ?? "", baseURL: location.origin };
}

function time(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const date = new Date(seconds * 1000);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function json(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

function status(value) {
  return h("span", { class: `status ${value}` }, value);
}

function errorBox(error) {
  const text = error instanceof RunwireError ? error.message : String(error?.message ?? error);
  return h("div", { class: "error", role: "alert" }, text);
}

/** Unauthorized answers send the user back to the login form. */
function handleAuth(error) {
  if (error instanceof RunwireError && error.status === 401) {
    sessionStorage.removeItem(KEY);
    route("login", error.message);
    return true;
  }
  return false;
}

// --- routing ---------------------------------------------------------------------------------

function route(forced, message) {
  viewAbort.abort();
  viewAbort = new AbortController();
  const signal = viewAbort.signal;
  main.replaceChildren();
  const loggedIn = Boolean(sessionStorage.getItem(KEY));
  logout.hidden = !loggedIn;
  const hash = location.hash.replace(/^#\/?/, "");
  if (forced === "login" || !loggedIn) {
    where.textContent = "log in";
    loginView(message);
    return;
  }
  const [page, ...rest] = hash.split("/");
  if (page === "run" && rest[0]) {
    where.textContent = `run ${decodeURIComponent(rest[0])}`;
    runView(decodeURIComponent(rest[0]), signal);
  } else {
    where.textContent = "runs";
    runsView(new URLSearchParams(hash.split("?")[1] ?? ""), signal);
  }
}

window.addEventListener("hashchange", () => route());
logout.addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "#/runs";
  route("login");
});

// --- login -----------------------------------------------------------------------------------

function loginView(message) {
  const input = h("input", { type: "password", id: "api-key", name: "api-key", required: true,
                             autocomplete: "current-password", size: 48 });
  const user = h("input", { type: "text", name: "username", autocomplete: "username",
                            value: "api-key", hidden: true, readonly: true });
  const note = h("div", { id: "login-error" }, message ? errorBox(message) : null);
  const form = h("form", { class: "inline", id: "login", onsubmit: async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    note.replaceChildren();
    try {  // the key must list runs: anything less is not the API key
      await listRuns({ limit: 1 }, { accessToken: key, baseURL: location.origin });
    } catch (error) {
      note.replaceChildren(errorBox(error));
      return;
    }
    sessionStorage.setItem(KEY, key);
    input.value = "";
    if (!location.hash.startsWith("#/run")) location.hash = "#/runs";
    route();
  } }, user, h("label", {}, "API key", input),
     h("button", { class: "primary", type: "submit" }, "Log in"));
  main.append(h("div", { class: "card" }, h("h2", {}, "Log in with the engine's API key"),
                h("p", { class: "muted" },
                  "The key stays in this tab's session storage and is sent only to this engine."),
                form, note));
  input.focus();
}

// --- the runs list ---------------------------------------------------------------------------

function runsView(params, signal) {
  const filters = {
    task: params.get("task") ?? "", status: params.get("status") ?? "", tag: params.get("tag") ?? "",
  };
  const task = h("input", { name: "task", value: filters.task, placeholder: "any task" });
  const statusSelect = h("select", { name: "status" }, h("option", { value: "" }, "any"),
                         STATUSES.map((s) => h("option", { value: s, selected: s === filters.status },
                                               s)));
  const tag = h("input", { name: "tag", value: filters.tag, placeholder: "any tag" });
  const apply = (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (task.value.trim()) query.set("task", task.value.trim());
    if (statusSelect.value) query.set("status", statusSelect.value);
    if (tag.value.trim()) query.set("tag", tag.value.trim());
    location.hash = `#/runs?${query}`;
  };
  const form = h("form", { class: "inline", id: "filters", onsubmit: apply },
                 h("label", {}, "Task", task), h("label", {}, "Status", statusSelect),
                 h("label", {}, "Tag", tag), h("button", { type: "submit" }, "Filter"));
  const dot = h("span", { class: "live-dot" });
  const state = h("span", { class: "muted", id: "runs-state" }, "loading");
  const body = h("tbody", { id: "runs" });
  const more = h("button", { id: "more", hidden: true }, "Load more");
  const problem = h("div");
  main.append(h("div", { class: "toolbar" }, form, h("span", {}, dot, state)),
              problem,
              h("table", {}, h("thead", {}, h("tr", {}, ["Run", "Task", "Status", "Created",
                                                         "Started", "Finished", "Tags"].map(
                                                           (name) => h("th", {}, name)))), body),
              more);
  const filter = { task: filters.task || undefined, status: filters.status || undefined,
                   tag: filters.tag || undefined };
  let extra = [];  // runs of the pages loaded with "Load more"
  let cursor = null;
  more.addEventListener("click", async () => {
    try {
      const page = await listRuns({ ...filter, limit: 50, cursor }, credentials());
      extra = extra.concat(page.runs);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      await refresh();
    } catch (error) {
      if (!handleAuth(error)) problem.replaceChildren(errorBox(error));
    }
  });
  function row(run) {
    return h("tr", { "data-run": run.id },
             h("td", { class: "id" }, h("a", { href: `#/run/${encodeURIComponent(run.id)}` },
                                        run.id)),
             h("td", {}, run.task_id), h("td", {}, status(run.status)),
             h("td", {}, time(run.created_at)), h("td", {}, time(run.started_at)),
             h("td", {}, time(run.finished_at)),
             h("td", {}, (run.tags ?? []).map((t) => h("span", { class: "tag" }, t))));
  }
  async function refresh() {
    const first = await listRuns({ ...filter, limit: 50 }, credentials());
    if (signal.aborted) return;
    if (cursor === null && extra.length === 0) {
      cursor = first.next_cursor;
      more.hidden = !cursor;
    }
    const seen = new Set(first.runs.map((r) => r.id));
    const runs = first.runs.concat(extra.filter((r) => !seen.has(r.id)));
    body.replaceChildren(...runs.map(row));
    if (!runs.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No runs.")));
    state.textContent = `live, ${runs.length} run${runs.length === 1 ? "" : "s"}, ` +
                        `updated ${new Date().toLocaleTimeString()}`;
    dot.className = "live-dot";
  }
  // live: the list is read again every second while the tab is visible
  (async () => {
    let failures = 0;
    while (!signal.aborted) {
      if (document.visibilityState === "visible") {
        try {
          await refresh();
          problem.replaceChildren();
          failures = 0;
        } catch (error) {
          if (handleAuth(error)) return;
          problem.replaceChildren(errorBox(error));
          dot.className = "live-dot off";
          failures++;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(30_000, 1000 * 2 ** failures)));
    }
  })();
}

// --- a run's page ----------------------------------------------------------------------------

function runView(runId, signal) {
  const facts = h("dl", { class: "facts", id: "facts" });
  const blocks = {};
  for (const name of ["payload", "output", "error", "metadata"]) {
    blocks[name] = h("pre", { class: "json", id: name });
  }
  const streamsBox = h("div", { id: "streams" });
  const problem = h("div", { id: "run-error" });
  const cancel = h("button", { class: "danger", id: "cancel", type: "button", disabled: true },
                   "Cancel run");
  const liveNote = h("span", { class: "muted", id: "live" }, "connecting");
  main.append(
    h("div", { class: "toolbar" }, h("a", { href: "#/runs" }, "\u2190 runs"), cancel, liveNote),
    problem,
    h("div", { class: "card" }, h("h2", {}, "Run"), facts),
    h("div", { class: "grid" },
      ["payload", "output", "error", "metadata"].map((name) => h("div", { class: "card" },
        h("h2", {}, name[0].toUpperCase() + name.slice(1)), blocks[name]))),
    streamsBox,
    inputForm(runId),
    tokenForm(runId));
  const streams = new Map();
  let run = null;
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await cancelRun(runId, credentials());
    } catch (error) {
      if (!handleAuth(error)) problem.replaceChildren(errorBox(error));
    }
  });
  function showRun(value) {
    run = value;
    facts.replaceChildren(
      ...[["id", value.id], ["task", value.task_id], ["status", status(value.status)],
          ["attempt", value.attempt], ["created", time(value.created_at)],
          ["started", time(value.started_at)], ["finished", time(value.finished_at)],
          ["tags", (value.tags ?? []).join(", ")], ["parent", value.parent_id ?? ""]]
        .flatMap(([name, v]) => [h("dt", {}, name), h("dd", { "data-fact": name }, v)]));
    for (const name of ["payload", "output", "error", "metadata"]) {
      const text = json(value[name]);
      if (blocks[name].textContent !== text) blocks[name].textContent = text;
    }
    cancel.disabled = FINISHED.has(value.status);
    for (const key of value.streams ?? []) stream(key);
  }
  function stream(key) {
    let view = streams.get(key);
    if (!view) {
      view = new StreamView(key);
      streams.set(key, view);
      streamsBox.append(view.element);
    }
    return view;
  }
  (async () => {
    try {
      for await (const event of subscribeToRunEvents(runId, { ...credentials(), signal })) {
        if (event.type === "run") {
          showRun(event.run);
          liveNote.textContent = FINISHED.has(event.run.status) ? "finished" : "live";
        } else if (event.type === "chunks") {
          stream(event.stream).add(event.startIndex, event.items);
        } else if (event.type === "stream_end") {
          stream(event.stream).end();
        } else if (event.type === "end") {
          liveNote.textContent = "finished; every stream in full";
        }
      }
    } catch (error) {
      if (signal.aborted || handleAuth(error)) return;
      problem.replaceChildren(errorBox(error));
      liveNote.textContent = "stopped";
    }
  })();
  return () => run;
}

function inputForm(runId) {
  const key = h("input", { name: "key", required: true, placeholder: "input stream key",
                           id: "input-key" });
  const value = h("textarea", { name: "value", id: "input-value", placeholder: '{"approved": true}' });
  const out = h("div", { id: "input-result", class: "muted" });
  const form = h("form", { class: "inline", id: "send", onsubmit: async (event) => {
    event.preventDefault();
    let data;
    try {
      data = JSON.parse(value.value || "null");
    } catch (error) {
      out.replaceChildren(errorBox(`not JSON: ${error.message}`));
      return;
    }
    try {
      const { index } = await sendInput(runId, key.value.trim(), data, credentials());
      out.replaceChildren(`sent to "${key.value.trim()}" as record ${index}`);
    } catch (error) {
      if (!handleAuth(error)) out.replaceChildren(errorBox(error));
    }
  } }, h("label", {}, "Key", key), h("label", {}, "Record (JSON)", value),
     h("button", { type: "submit" }, "Send"));
  return h("div", { class: "card" }, h("h2", {}, "Send to an input stream"), form, out);
}

function tokenForm(runId) {
  const choices = [
    ["read", `read:runs:${runId}`, "read the run and its streams", true],
    ["send", `write:inputStreams:${runId}`, "send to its input streams", false],
    ["cancel", `write:runs:${runId}`, "cancel it", false],
  ];
  const boxes = choices.map(([name, scope, text, on]) => h("label", {},
    h("span", {}, h("input", { type: "checkbox", name, value: scope, checked: on }), ` ${text}`)));
  const expires = h("input", { type: "number", name: "expires", value: 900, min: 1, id: "expires" });
  const out = h("div", { id: "token-result" });
  const form = h("form", { class: "inline", id: "token", onsubmit: async (event) => {
    event.preventDefault();
    const scopes = [...form.querySelectorAll("input[type=checkbox]:checked")].map((b) => b.value);
    try {
      const made = await createToken(scopes, Number(expires.value), credentials());
      out.replaceChildren(h("p", { class: "muted" }, `expires ${time(made.expires_at)}; scopes `,
                            scopes.join(" ")),
                          h("div", { class: "token-out", id: "token-value" }, made.token));
    } catch (error) {
      if (!handleAuth(error)) out.replaceChildren(errorBox(error));
    }
  } }, boxes, h("label", {}, "Expires in (s)", expires),
     h("button", { type: "submit" }, "Make token"));
  return h("div", { class: "card" }, h("h2", {}, "Public access token"),
           h("p", { class: "muted" }, "For a browser or app that should see only this run."),
           form, out);
}

// --- a stream, windowed ----------------------------------------------------------------------

const ROW = 18;          // px, as .viewport .row in dashboard.css
const WRAP = 160;        // characters per text row

/**
 * One output stream: "Text" (string chunks joined, as text, cut into rows at newlines and
 * every WRAP characters) or "Chunks" (one row per chunk with its index, JSON shown as JSON).
 * Only the rows in view are in the DOM; data is drawn once per animation frame.
 */
class StreamView {
  constructor(key) {
    this.key = key;
    this.chunks = [];
    this.lines = [""];
    this.textOnly = true;
    this.mode = null;  // "text" or "chunks", chosen by the first chunks unless the user did
    this.ended = false;
    this.pending = false;
    this.follow = true;
    this.count = h("span", { class: "muted", "data-count": "" }, "0 chunks");
    this.state = h("span", { class: "muted" }, "live");
    this.textButton = h("button", { type: "button", onclick: () => this.setMode("text") }, "Text");
    this.chunkButton = h("button", { type: "button", onclick: () => this.setMode("chunks") },
                         "Chunks");
    this.spacer = h("div", { class: "spacer" });
    this.rows = h("div", { class: "rows" });
    this.viewport = h("div", { class: "viewport", tabindex: 0 }, this.spacer, this.rows);
    this.viewport.addEventListener("scroll", () => {
      const v = this.viewport;
      this.follow = v.scrollTop + v.clientHeight >= v.scrollHeight - ROW;
      this.schedule();
    }, { passive: true });
    this.element = h("section", { class: "card stream", "data-stream": key },
                     h("div", { class: "stream-head" }, h("h2", {}, `Stream "${key}"`), this.count,
                       this.state, this.textButton, this.chunkButton),
                     this.viewport);
  }

  add(startIndex, items) {
    for (let i = 0; i < items.length; i++) {
      const index = startIndex + i;
      if (index < this.chunks.length) continue;  // already had it
      const item = items[i];
      this.chunks.push(item);
      if (typeof item === "string") this.appendText(item);
      else this.textOnly = false;
    }
    this.schedule();
  }

  appendText(text) {
    const lines = this.lines;
    const parts = text.split("\n");
    for (let p = 0; p < parts.length; p++) {
      if (p > 0) lines.push("");
      let piece = parts[p];
      while (piece.length) {
        const last = lines.length - 1;
        const room = WRAP - lines[last].length;
        if (room <= 0) {
          lines.push("");
          continue;
        }
        lines[last] += piece.slice(0, room);
        piece = piece.slice(room);
      }
    }
  }

  end() {
    this.ended = true;
    this.state.textContent = "ended";
    this.element.dataset.ended = "true";
    this.schedule();
  }

  setMode(mode) {
    this.mode = mode;
    this.follow = true;
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  draw() {
    const mode = this.mode ?? (this.textOnly ? "text" : "chunks");
    const text = mode === "text" && this.textOnly;
    this.textButton.disabled = !this.textOnly || text;
    this.chunkButton.disabled = !text;
    this.element.dataset.mode = text ? "text" : "chunks";
    const total = text ? this.lines.length : this.chunks.length;
    this.count.textContent = `${this.chunks.length} chunk${this.chunks.length === 1 ? "" : "s"}`;
    this.element.dataset.chunks = String(this.chunks.length);
    this.spacer.style.height = `${total * ROW}px`;
    const v = this.viewport;
    if (this.follow) v.scrollTop = v.scrollHeight;
    const first = Math.max(0, Math.floor(v.scrollTop / ROW) - 5);
    const last = Math.min(total, Math.ceil((v.scrollTop + v.clientHeight) / ROW) + 5);
    this.rows.style.transform = `translateY(${first * ROW}px)`;
    const out = [];
    for (let i = first; i < last; i++) {
      if (text) {
        out.push(h("div", { class: "row" }, this.lines[i]));
      } else {
        const chunk = this.chunks[i];
        out.push(h("div", { class: "row", "data-index": i },
                   h("span", { class: "index" }, i),
                   typeof chunk === "string" ? JSON.stringify(chunk) : JSON.stringify(chunk)));
      }
    }
    this.rows.replaceChildren(...out);
    this.element.dataset.drawnAt = String(performance.now());
  }

  /** The whole text (string chunks joined), for tests and copying. */
  text() {
    return this.chunks.filter((c) => typeof c === "string").join("");
  }
}

route();
