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
export type RunPart<T = unknown> = {
    type: "run";
    run: Run;
} | {
    type: string;
    chunk: T;
    index: number;
    run?: undefined;
};
/** The events of `/v1/runs/{run}/events`, as {@link subscribeToRunEvents} yields them. */
export type RunEvent<T = unknown> = {
    type: "run";
    run: Run;
} | {
    type: "chunks";
    stream: string;
    startIndex: number;
    items: T[];
} | {
    type: "stream_end";
    stream: string;
    index: number;
} | {
    type: "end";
};
/** An answer other than success, or a read that cannot go on. */
export declare class RunwireError extends Error {
    /** The HTTP status (0: no answer, e.g. the network). */
    readonly status: number;
    /** The engine's error code (`unauthorized`, `not_found`, ...). */
    readonly code: string;
    constructor(status: number, code: string, message: string);
    /** Whether trying again could help (not for a bad credential, a missing run, bad input). */
    get retryable(): boolean;
}
/** The Durable Streams offset of chunk `index`. */
export declare function formatOffset(index: number): string;
/** The chunk index an offset stands for. */
export declare function parseOffset(offset: string): number;
/**
 * A run's output stream, batch by batch (each with its first chunk's index), live until the
 * stream ends. A key nobody wrote yet is empty until chunks arrive.
 *
 * @throws RunwireError 401/403/404 (and other refusals) at once, without retrying.
 */
export declare function readStreamBatches<T = unknown>(runId: string, key: string, options: ReadStreamOptions): AsyncGenerator<StreamBatch<T>, void, undefined>;
/**
 * A run's output stream, chunk by chunk: an async iterable that ends when the stream ends (the
 * run finished and the stream's drain is done), when `signal` aborts, or after
 * `timeoutInSeconds` without a chunk.
 */
export declare function readStream<T = unknown>(runId: string, key: string, options: ReadStreamOptions): AsyncGenerator<T, void, undefined>;
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
export declare function subscribeToRunEvents<T = unknown>(runId: string, options: SubscribeOptions): AsyncGenerator<RunEvent<T>, void, undefined>;
/**
 * A run with its streams, part by part: `{type: "run", run}` on every change of the run, and
 * `{type: key, chunk, index}` for each chunk of the stream `key`. Ends once the run finished
 * and every stream ended.
 */
export declare function subscribeToRun<T = unknown>(runId: string, options: SubscribeOptions): AsyncGenerator<RunPart<T>, void, undefined>;
/** Send a record to a run's input stream (what `inputs.wait()`/`once()` in the task get). */
export declare function sendInput(runId: string, key: string, data: unknown, options: ConnectionOptions & {
    idempotencyKey?: string;
}): Promise<{
    index: number;
}>;
/** Complete a waitpoint token (what `wait.for_token(...)` in the task gets). */
export declare function completeToken(tokenId: string, data: unknown, options: ConnectionOptions): Promise<{
    completed: boolean;
    waitpoint: Record<string, unknown>;
}>;
/** A run object. */
export declare function retrieveRun(runId: string, options: ConnectionOptions): Promise<Run>;
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
export declare function listRuns(filter: ListRunsFilter, options: ConnectionOptions): Promise<{
    runs: Run[];
    next_cursor: string | null;
}>;
/** Cancel a run (resolves once it is canceled; a finished run is a 409 `run_finished`). */
export declare function cancelRun(runId: string, options: ConnectionOptions): Promise<{
    id: string;
    canceled: boolean;
}>;
/** Trigger a task: the run's id and its public access token. */
export declare function trigger(taskId: string, payload: unknown, options: ConnectionOptions & {
    tags?: string[];
    idempotencyKey?: string;
    metadata?: Record<string, unknown>;
}): Promise<{
    id: string;
    public_access_token: string;
}>;
/** Make a public access token (the API key only): scopes such as `read:runs:<run id>`. */
export declare function createToken(scopes: string[], expiresInSeconds: number, options: ConnectionOptions): Promise<{
    token: string;
    expires_at: number;
}>;
