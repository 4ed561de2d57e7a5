/**
 * runwire in the browser: a framework-free ES module client for the engine's HTTP door
 * (docs/http.md, docs/browser.md).
 *
 * - Output streams are read as Durable Streams (`/v1/runs/{run}/streams/{key}`) with
 *   `@durable-streams/client`: it keeps the SSE connection, reconnects a response the engine
 *   closes and resumes from the last offset. What it gives up on (a cut link, a 5xx after its
 *   retries) this module retries from the next chunk index with exponential backoff, so nothing
 *   is lost or repeated. 401, 403 and 404 stop at once with a {@link RunwireError}.
 * - A run and all its streams come from one SSE response (`/v1/runs/{run}/events`), read with
 *   `@microsoft/fetch-event-source` (fetch-based, so it sends the Authorization header), which
 *   reconnects with `Last-Event-ID`: the engine resumes exactly after the last event seen.
 */

import { FetchError, stream as dsStream } from "@durable-streams/client";
import { fetchEventSource } from "@microsoft/fetch-event-source";

/** Where the engine is and the credential to use. */
export interface ConnectionOptions {
  /** The API key or a public access token (a run's token, or one made with `createToken`). */
  accessToken: string;
  /** The engine's HTTP URL, e.g. `http://127.0.0.1:8765`; the page's origin if omitted. */
  baseURL?: string;
  /** A fetch to use instead of the global one. */
  fetch?: typeof globalThis.fetch;
}

export interface ReadStreamOptions extends ConnectionOptions {
  /** The first chunk index to read (0, the start, if omitted). */
  startIndex?: number;
  /** End the iteration when no chunk came for this many seconds (never, if omitted). */
  timeoutInSeconds?: number;
  /** Aborting it ends the iteration (quietly) and closes the connection. */
  signal?: AbortSignal;
  /** Backoff between reconnections after a failure: first and largest delay, in ms. */
  retryDelayInMs?: number;
  maxRetryDelayInMs?: number;
}

/** Chunks read together, with the index of the first one. */
export interface StreamBatch<T = unknown> {
  startIndex: number;
  items: T[];
}

/** The run object of the JSON API (docs/http.md). */
export interface Run {
  id: string;
  task_id: string;
  status: string;
  payload: unknown;
  output: unknown;
  error: unknown;
  metadata: Record<string, unknown> | null;
  tags: string[];
  attempt: number;
  parent_id: string | null;
  root_id: string | null;
  streams: string[];
  created_at: number | null;
  started_at: number | null;
  finished_at: number | null;
  [field: string]: unknown;
}

/** One part of {@link subscribeToRun}: the run (on every change) or one chunk of a stream. */
export type RunPart<T = unknown> =
  | { type: "run"; run: Run }
  | { type: string; chunk: T; index: number; run?: undefined };

/** The events of `/v1/runs/{run}/events`, as {@link subscribeToRunEvents} yields them. */
export type RunEvent<T = unknown> =
  | { type: "run"; run: Run }
  | { type: "chunks"; stream: string; startIndex: number; items: T[] }
  | { type: "stream_end"; stream: string; index: number }
  | { type: "end" };

/** An answer other than success, or a read that cannot go on. */
export class RunwireError extends Error {
  /** The HTTP status (0: no answer, e.g. the network). */
  readonly status: number;
  /** The engine's error code (`unauthorized`, `not_found`, ...). */
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = "RunwireError";
    this.status = status;
    this.code = code;
  }
  /** Whether trying again could help (not for a bad credential, a missing run, bad input). */
  get retryable(): boolean {
    return this.status === 0 || this.status === 408 || this.status === 429 || this.status >= 500;
  }
}

const FATAL = new Set([400, 401, 403, 404, 405, 409, 410, 413, 422]);

function base(options: ConnectionOptions): string {
  const url = options.baseURL ?? (globalThis as { location?: Location }).location?.origin;
  if (!url) throw new TypeError("give baseURL: the engine's HTTP URL");
  return url.replace(/\/+$/, "");
}

function checkToken(options: ConnectionOptions): string {
  if (typeof options?.accessToken !== "string" || !options.accessToken.trim()) {
    throw new TypeError("accessToken must be the API key or a public access token");
  }
  return options.accessToken.trim();
}

function segment(name: string, value: unknown): string {
  if (typeof value !== "string" || !value) throw new TypeError(`${name} must be a non-empty string`);
  return encodeURIComponent(value);
}

/** The Durable Streams offset of chunk `index`. */
export function formatOffset(index: number): string {
  return `0000000000000000_${String(index).padStart(16, "0")}`;
}

/** The chunk index an offset stands for. */
export function parseOffset(offset: string): number {
  const found = /^\d{16}_(\d{16})$/.exec(offset);
  if (!found) throw new RunwireError(0, "bad_offset", `not a run stream offset: ${offset}`);
  return Number(found[1]);
}

function fromFetchError(error: FetchError): RunwireError {
  const body = error.json as { code?: string; message?: string } | undefined;
  const code = body?.code ?? (error.status === 401 ? "unauthorized" : `http_${error.status}`);
  const message = body?.message ?? error.text ?? error.message;
  return new RunwireError(error.status, code, describe(error.status, code, message));
}

function describe(status: number, code: string, message: string): string {
  const what: Record<number, string> = {
    401: "the access token is wrong or expired",
    403: "the access token may not do this",
    404: "not found",
  };
  return `${what[status] ?? `HTTP ${status}`} (${code}): ${message}`;
}

async function request<T>(options: ConnectionOptions, method: string, path: string,
                          body?: unknown, headers: Record<string, string> = {}): Promise<T> {
  const token = checkToken(options);
  const fetcher = options.fetch ?? globalThis.fetch.bind(globalThis);
  let response: Response;
  try {
    response = await fetcher(base(options) + path, {
      method,
      headers: {
        Authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new RunwireError(0, "network", `the engine did not answer: ${String(error)}`);
  }
  const text = await response.text();
  let json: unknown = undefined;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = undefined;
  }
  if (!response.ok) {
    const err = (json ?? {}) as { code?: string; message?: string };
    const code = err.code ?? `http_${response.status}`;
    throw new RunwireError(response.status, code,
                           describe(response.status, code, err.message ?? text));
  }
  return json as T;
}

/** Exponential backoff with full jitter: attempt 0, 1, ... -> a delay in ms. */
function backoff(attempt: number, first: number, most: number): number {
  return Math.random() * Math.min(most, first * 2 ** attempt);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * A run's output stream, batch by batch (each with its first chunk's index), live until the
 * stream ends. A key nobody wrote yet is empty until chunks arrive.
 *
 * @throws RunwireError 401/403/404 (and other refusals) at once, without retrying.
 */
export async function* readStreamBatches<T = unknown>(
  runId: string, key: string, options: ReadStreamOptions,
): AsyncGenerator<StreamBatch<T>, void, undefined> {
  const token = checkToken(options);
  const url = `${base(options)}/v1/runs/${segment("runId", runId)}/streams/${segment("key", key)}`;
  let next = options.startIndex ?? 0;
  if (!Number.isSafeInteger(next) || next < 0) throw new TypeError("startIndex must be a whole number >= 0");
  const timeout = options.timeoutInSeconds;
  if (timeout !== undefined && !(typeof timeout === "number" && timeout > 0)) {
    throw new TypeError("timeoutInSeconds must be a number > 0");
  }
  const stop = new AbortController();
  const outer = options.signal;
  const onAbort = (): void => stop.abort();
  outer?.addEventListener("abort", onAbort, { once: true });
  if (outer?.aborted) stop.abort();
  let idle: ReturnType<typeof setTimeout> | undefined;
  const arm = (): void => {
    if (timeout === undefined) return;
    clearTimeout(idle);
    idle = setTimeout(() => stop.abort(), timeout * 1000);
  };
  arm();
  let failures = 0;
  try {
    while (!stop.signal.aborted) {
      const attempt = new AbortController();
      const cancel = (): void => attempt.abort();
      stop.signal.addEventListener("abort", cancel, { once: true });
      try {
        const response = await dsStream<T>({
          url,
          headers: { Authorization: `Bearer ${token}` },
          offset: next === 0 ? "-1" : formatOffset(next),
          live: "sse",
          json: true,
          signal: attempt.signal,
          fetch: options.fetch,
          warnOnHttp: false,
          // one try per connection here: this loop does the backoff, from the next index
          backoffOptions: { initialDelay: 100, maxDelay: 100, multiplier: 1, maxRetries: 0 },
          sseResilience: { logWarnings: false },
        });
        // the response yields the chunks from `next` on, in order, across its own
        // reconnections: each one is the next index. `next` moves only when chunks are
        // handed out, so a failure drops the ones at hand and reads them again.
        const pending: T[] = [];
        const iterator = response.jsonStream()[Symbol.asyncIterator]();
        let coming: Promise<IteratorResult<T>> | undefined;
        let tick: Promise<typeof IDLE> | undefined;  // one per batch, not one per chunk
        while (true) {
          coming ??= iterator.next();
          if (pending.length) tick ??= idleTick();
          const step = pending.length ? await Promise.race([coming, tick!]) : await coming;
          if (step === IDLE) {  // nothing more at hand: hand out what came together
            tick = undefined;
            const items = pending.splice(0);
            next += items.length;
            yield { startIndex: next - items.length, items };
            continue;
          }
          coming = undefined;
          const { done, value } = step as IteratorResult<T>;
          if (done) break;
          failures = 0;
          arm();
          pending.push(value);
        }
        if (pending.length) {
          const items = pending.splice(0);
          next += items.length;
          yield { startIndex: next - items.length, items };
        }
        if (response.streamClosed) return;
      } catch (error) {
        if (stop.signal.aborted) return;
        const failure = error instanceof FetchError ? fromFetchError(error) : error;
        if (failure instanceof RunwireError && FATAL.has(failure.status)) throw failure;
        if (!(failure instanceof RunwireError) && !isTransient(failure)) throw failure;
      } finally {
        stop.signal.removeEventListener("abort", cancel);
        attempt.abort();
      }
      await sleep(backoff(failures++, options.retryDelayInMs ?? 250,
                          options.maxRetryDelayInMs ?? 10_000), stop.signal);
    }
  } finally {
    clearTimeout(idle);
    outer?.removeEventListener("abort", onAbort);
    stop.abort();
  }
}

function isTransient(error: unknown): boolean {
  // a cut connection or a refused one: fetch's TypeError, or the client's own wrapping
  return error instanceof TypeError || (error instanceof Error && /network|fetch|abort|terminated|SSE/i.test(
    `${error.name} ${error.message}`));
}

const IDLE = Symbol("idle");

/** Resolves after the chunks already at hand were taken (a macrotask later). */
function idleTick(): Promise<typeof IDLE> {
  return new Promise((resolve) => setTimeout(() => resolve(IDLE), 0));
}

/**
 * A run's output stream, chunk by chunk: an async iterable that ends when the stream ends (the
 * run finished and the stream's drain is done), when `signal` aborts, or after
 * `timeoutInSeconds` without a chunk.
 */
export async function* readStream<T = unknown>(
  runId: string, key: string, options: ReadStreamOptions,
): AsyncGenerator<T, void, undefined> {
  for await (const batch of readStreamBatches<T>(runId, key, options)) {
    yield* batch.items;
  }
}

export interface SubscribeOptions extends ConnectionOptions {
  signal?: AbortSignal;
  retryDelayInMs?: number;
  maxRetryDelayInMs?: number;
}

/**
 * A run and every one of its streams, from one SSE response: the run object on every change,
 * each stream's chunks, `stream_end` when a stream ends and `end` once the run finished and
 * every stream ended. Reconnects with `Last-Event-ID` (nothing lost or repeated); 401, 403
 * and 404 end it with a {@link RunwireError}.
 */
export async function* subscribeToRunEvents<T = unknown>(
  runId: string, options: SubscribeOptions,
): AsyncGenerator<RunEvent<T>, void, undefined> {
  const token = checkToken(options);
  const url = `${base(options)}/v1/runs/${segment("runId", runId)}/events`;
  const stop = new AbortController();
  const outer = options.signal;
  const onAbort = (): void => stop.abort();
  outer?.addEventListener("abort", onAbort, { once: true });
  if (outer?.aborted) stop.abort();
  const queue: RunEvent<T>[] = [];
  let wake: (() => void) | undefined;
  let done = false;
  let failure: unknown = undefined;
  let failures = 0;
  const push = (event: RunEvent<T>): void => {
    queue.push(event);
    wake?.();
    wake = undefined;
  };
  const first = options.retryDelayInMs ?? 250;
  const most = options.maxRetryDelayInMs ?? 10_000;
  const finished = fetchEventSource(url, {
    headers: { Authorization: `Bearer ${token}` },
    signal: stop.signal,
    openWhenHidden: true,
    fetch: options.fetch,
    async onopen(response) {
      if (response.ok && response.headers.get("content-type")?.startsWith("text/event-stream")) {
        failures = 0;
        return;
      }
      let body: { code?: string; message?: string } = {};
      try {
        body = await response.json();
      } catch {
        /* not JSON */
      }
      const code = body.code ?? `http_${response.status}`;
      throw new RunwireError(response.status, code,
                             describe(response.status, code, body.message ?? response.statusText));
    },
    onmessage(message) {
      if (!message.event) return;
      const data = JSON.parse(message.data);
      switch (message.event) {
        case "run":
          push({ type: "run", run: data as Run });
          break;
        case "chunks":
          push({ type: "chunks", stream: data.stream, startIndex: parseOffset(data.offset),
                 items: data.items as T[] });
          break;
        case "stream_end":
          push({ type: "stream_end", stream: data.stream, index: parseOffset(data.offset) });
          break;
        case "end":
          done = true;
          push({ type: "end" });
          stop.abort();
          break;
      }
    },
    onclose() {
      // the engine closes a response after Limits.sse_interval: go on from Last-Event-ID
      if (!done) throw new RunwireError(0, "closed", "the events response closed");
    },
    onerror(error) {
      if (error instanceof RunwireError && !error.retryable) throw error;
      return backoff(failures++, first, most);
    },
  });
  finished.then(() => { done = true; wake?.(); },
                (error: unknown) => { failure = error; wake?.(); });
  try {
    while (true) {
      const event = queue.shift();
      if (event !== undefined) {
        yield event;
        if (event.type === "end") return;
        continue;
      }
      if (failure !== undefined) throw failure;
      if (done || stop.signal.aborted) return;
      await new Promise<void>((resolve) => { wake = resolve; });
    }
  } finally {
    outer?.removeEventListener("abort", onAbort);
    stop.abort();
  }
}

/**
 * A run with its streams, part by part: `{type: "run", run}` on every change of the run, and
 * `{type: key, chunk, index}` for each chunk of the stream `key`. Ends once the run finished
 * and every stream ended.
 */
export async function* subscribeToRun<T = unknown>(
  runId: string, options: SubscribeOptions,
): AsyncGenerator<RunPart<T>, void, undefined> {
  for await (const event of subscribeToRunEvents<T>(runId, options)) {
    if (event.type === "run") {
      yield { type: "run", run: event.run };
    } else if (event.type === "chunks") {
      for (let i = 0; i < event.items.length; i++) {
        yield { type: event.stream, chunk: event.items[i] as T, index: event.startIndex + i };
      }
    }
  }
}

/** Send a record to a run's input stream (what `inputs.wait()`/`once()` in the task get). */
export async function sendInput(runId: string, key: string, data: unknown,
                                options: ConnectionOptions & { idempotencyKey?: string }):
    Promise<{ index: number }> {
  if (data === undefined) throw new TypeError("data must be a JSON value (null, not undefined)");
  return request(options, "POST",
                 `/v1/api/runs/${segment("runId", runId)}/inputs/${segment("key", key)}`, data,
                 options.idempotencyKey ? { "Idempotency-Key": options.idempotencyKey } : {});
}

/** Complete a waitpoint token (what `wait.for_token(...)` in the task gets). */
export async function completeToken(tokenId: string, data: unknown, options: ConnectionOptions):
    Promise<{ completed: boolean; waitpoint: Record<string, unknown> }> {
  return request(options, "POST", `/v1/api/waitpoints/${segment("tokenId", tokenId)}/complete`,
                 data === undefined ? null : data);
}

/** A run object. */
export async function retrieveRun(runId: string, options: ConnectionOptions): Promise<Run> {
  return request(options, "GET", `/v1/api/runs/${segment("runId", runId)}`);
}

export interface ListRunsFilter {
  task?: string;
  status?: string | string[];
  tag?: string | string[];
  createdAfter?: number;
  createdBefore?: number;
  limit?: number;
  cursor?: string;
}

/** A page of runs, newest first, and the cursor of the next page (`null`: the last). */
export async function listRuns(filter: ListRunsFilter, options: ConnectionOptions):
    Promise<{ runs: Run[]; next_cursor: string | null }> {
  const query = new URLSearchParams();
  if (filter.task) query.set("task", filter.task);
  for (const status of [filter.status ?? []].flat()) query.append("status", status);
  for (const tag of [filter.tag ?? []].flat()) query.append("tag", tag);
  if (filter.createdAfter !== undefined) query.set("created_after", String(filter.createdAfter));
  if (filter.createdBefore !== undefined) query.set("created_before", String(filter.createdBefore));
  if (filter.limit !== undefined) query.set("limit", String(filter.limit));
  if (filter.cursor) query.set("cursor", filter.cursor);
  return request(options, "GET", `/v1/api/runs?${query}`);
}

/** Cancel a run (resolves once it is canceled; a finished run is a 409 `run_finished`). */
export async function cancelRun(runId: string, options: ConnectionOptions):
    Promise<{ id: string; canceled: boolean }> {
  return request(options, "POST", `/v1/api/runs/${segment("runId", runId)}/cancel`);
}

/** Trigger a task: the run's id and its public access token. */
export async function trigger(taskId: string, payload: unknown,
                              options: ConnectionOptions & { tags?: string[]; idempotencyKey?: string;
                                                             metadata?: Record<string, unknown> }):
    Promise<{ id: string; public_access_token: string }> {
  const run: Record<string, unknown> = {};
  if (options.tags) run.tags = options.tags;
  if (options.idempotencyKey) run.idempotency_key = options.idempotencyKey;
  if (options.metadata) run.metadata = options.metadata;
  return request(options, "POST", `/v1/api/tasks/${segment("taskId", taskId)}/trigger`,
                 { payload, options: run });
}

/** Make a public access token (the API key only): scopes such as `read:runs:<run id>`. */
export async function createToken(scopes: string[], expiresInSeconds: number,
                                  options: ConnectionOptions):
    Promise<{ token: string; expires_at: number }> {
  return request(options, "POST", "/v1/api/tokens", { scopes, expires_in: expiresInSeconds });
}
