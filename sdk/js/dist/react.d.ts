/**
 * React hooks on the runwire client (docs/browser.md). React is a peer: this module imports it
 * from the bare specifier `react`, so a page gives it with an import map and a bundler with its
 * own copy; the client comes from `./runwire.js` next to this file.
 *
 * Every hook re-renders at most once per `throttleInMs` (default 16 ms) however fast chunks
 * come; `onData` is called for every chunk as it arrives.
 */
import { RunwireError } from "./index";
import type { Run } from "./index";
export interface RealtimeOptions {
    accessToken: string;
    baseURL?: string;
    /** At most one re-render per this many ms (default 16). */
    throttleInMs?: number;
    /** Start nothing while false (default true). */
    enabled?: boolean;
}
export interface RealtimeStreamOptions<T> extends RealtimeOptions {
    /** Stop when no chunk came for this many seconds. */
    timeoutInSeconds?: number;
    /** The first chunk index to read (default 0). */
    startIndex?: number;
    /** Called for every chunk, as it arrives (not throttled). */
    onData?: (chunk: T, index: number) => void;
}
/** A stream definition: what `streams.define(id=...)` names in Python. */
export interface StreamDef<T = unknown> {
    id: string;
    /** For typing only. */
    readonly __type?: T;
}
/** A stream definition for the hooks, typed: `const ai = defineStream<string>("ai")`. */
export declare function defineStream<T = unknown>(id: string): StreamDef<T>;
export interface RealtimeStreamResult<T> {
    /** Every chunk so far (from `startIndex`). */
    parts: T[];
    error: RunwireError | Error | undefined;
    /** The stream ended (the run finished and its drain is done). */
    isComplete: boolean;
    /** Stop reading (the connection closes). */
    stop: () => void;
}
/**
 * A run's output stream, live: `useRealtimeStream(runId, key, options)` or
 * `useRealtimeStream(streamDef, runId, options)`.
 */
export declare function useRealtimeStream<T = unknown>(defOrRunId: StreamDef<T> | string, keyOrRunId: string | undefined, options: RealtimeStreamOptions<T>): RealtimeStreamResult<T>;
export interface RealtimeRunResult {
    run: Run | undefined;
    error: Error | undefined;
    stop: () => void;
}
export interface RealtimeRunWithStreamsResult<S extends Record<string, unknown[]>> extends RealtimeRunResult {
    /** Each stream's chunks so far, by key. */
    streams: Partial<S>;
}
/** A run, live (its status, output, metadata ... on every change). */
export declare function useRealtimeRun(runId: string | undefined, options: RealtimeOptions & {
    onComplete?: (run: Run) => void;
}): RealtimeRunResult;
/** A run and every one of its streams, live. */
export declare function useRealtimeRunWithStreams<S extends Record<string, unknown[]> = Record<string, unknown[]>>(runId: string | undefined, options: RealtimeOptions & {
    onComplete?: (run: Run) => void;
}): RealtimeRunWithStreamsResult<S>;
export interface InputStreamSendResult<T> {
    /** Send a record; resolves to its index in the input stream. */
    send: (data: T) => Promise<{
        index: number;
    } | undefined>;
    isLoading: boolean;
    error: Error | undefined;
}
/** Send records to a run's input stream (`inputs.define(...)` / `wait()` in the task). */
export declare function useInputStreamSend<T = unknown>(runId: string | undefined, key: string, options: {
    accessToken: string;
    baseURL?: string;
}): InputStreamSendResult<T>;
export { RunwireError };
export type { Run };
