/**
 * React hooks on the runwire client (docs/browser.md). React is a peer: this module imports it
 * from the bare specifier `react`, so a page gives it with an import map and a bundler with its
 * own copy; the client comes from `./runwire.js` next to this file.
 *
 * Every hook re-renders at most once per `throttleInMs` (default 16 ms) however fast chunks
 * come; `onData` is called for every chunk as it arrives.
 */

import { useCallback, useEffect, useLayoutEffect, useRef, useState } from "react";
import {
  RunwireError, readStreamBatches, sendInput, subscribeToRunEvents,
} from "./index";
import type { ConnectionOptions, Run } from "./index";

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
export function defineStream<T = unknown>(id: string): StreamDef<T> {
  return { id };
}

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
 * State that changes at most once per `throttleInMs`: `flush()` asks for the next snapshot
 * (`take()`), taken no sooner than `throttleInMs` after the previous snapshot was committed
 * to the DOM, and rendered. Everything a hook shows comes from the snapshots, so renders that
 * show new data are at least `throttleInMs` apart, however late React runs them.
 */
function useThrottled<S>(initial: S, take: () => S, throttleInMs: number):
    [S, () => void, (state: S) => void] {
  const [state, setState] = useState<S>(initial);
  const last = useRef(-Infinity);  // when the last snapshot was committed
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const committing = useRef(false);  // a snapshot is set but not yet on screen
  const wanted = useRef(false);  // new data came meanwhile
  const taker = useRef(take);
  taker.current = take;
  const schedule = useCallback(() => {
    // whole ms, rounded up: browsers truncate a fractional delay
    const wait = Math.max(0, Math.ceil(last.current + throttleInMs - performance.now()));
    timer.current = setTimeout(() => {
      timer.current = undefined;
      committing.current = true;
      setState(taker.current());
    }, wait);
  }, [throttleInMs]);
  useLayoutEffect(() => {
    last.current = performance.now();  // this snapshot is on screen: the interval starts
    committing.current = false;
    if (wanted.current && timer.current === undefined) {
      wanted.current = false;
      schedule();
    }
  }, [state, schedule]);
  useEffect(() => () => {
    clearTimeout(timer.current);
    timer.current = undefined;
  }, []);
  const flush = useCallback(() => {
    if (timer.current !== undefined || committing.current) {
      wanted.current = true;
      return;
    }
    schedule();
  }, [schedule]);
  const reset = useCallback((value: S) => {
    clearTimeout(timer.current);
    timer.current = undefined;
    wanted.current = false;
    setState(value);
  }, []);
  return [state, flush, reset];
}

function connection(options: RealtimeOptions): ConnectionOptions {
  return { accessToken: options.accessToken, baseURL: options.baseURL };
}

/**
 * A run's output stream, live: `useRealtimeStream(runId, key, options)` or
 * `useRealtimeStream(streamDef, runId, options)`.
 */
export function useRealtimeStream<T = unknown>(
  defOrRunId: StreamDef<T> | string, keyOrRunId: string | undefined,
  options: RealtimeStreamOptions<T>,
): RealtimeStreamResult<T> {
  const runId = typeof defOrRunId === "string" ? defOrRunId : keyOrRunId;
  const key = typeof defOrRunId === "string" ? keyOrRunId : defOrRunId?.id;
  const { accessToken, baseURL, timeoutInSeconds, startIndex } = options;
  const enabled = options.enabled ?? true;
  const live = useRef<StreamState<T>>({ parts: [], error: undefined, isComplete: false });
  const [shown, flush, reset] = useThrottled<StreamState<T>>(
    live.current, () => ({ ...live.current, parts: live.current.parts.slice() }),
    options.throttleInMs ?? 16);
  const onData = useRef(options.onData);
  onData.current = options.onData;
  const abort = useRef<AbortController | undefined>(undefined);

  useEffect(() => {
    live.current = { parts: [], error: undefined, isComplete: false };
    reset(live.current);
    if (!enabled || !runId || !key || !accessToken) return undefined;
    const controller = new AbortController();
    abort.current = controller;
    const state = live.current;
    (async () => {
      try {
        for await (const batch of readStreamBatches<T>(runId, key, {
          accessToken, baseURL, timeoutInSeconds, startIndex, signal: controller.signal,
        })) {
          for (let i = 0; i < batch.items.length; i++) {
            const chunk = batch.items[i] as T;
            state.parts.push(chunk);
            onData.current?.(chunk, batch.startIndex + i);
          }
          flush();
        }
        if (!controller.signal.aborted) state.isComplete = true;
      } catch (failure) {
        if (!controller.signal.aborted) state.error = failure as Error;
      }
      if (!controller.signal.aborted) flush();
    })();
    return () => controller.abort();
  }, [runId, key, accessToken, baseURL, timeoutInSeconds, startIndex, enabled, flush, reset]);

  const stop = useCallback(() => abort.current?.abort(), []);
  return { parts: shown.parts, error: shown.error, isComplete: shown.isComplete, stop };
}

interface StreamState<T> {
  parts: T[];
  error: Error | undefined;
  isComplete: boolean;
}

export interface RealtimeRunResult {
  run: Run | undefined;
  error: Error | undefined;
  stop: () => void;
}

export interface RealtimeRunWithStreamsResult<S extends Record<string, unknown[]>> extends RealtimeRunResult {
  /** Each stream's chunks so far, by key. */
  streams: Partial<S>;
}

interface RunState {
  run: Run | undefined;
  streams: Record<string, unknown[]>;
  error: Error | undefined;
}

function useRunEvents(runId: string | undefined, options: RealtimeOptions & {
  withStreams: boolean; onComplete?: (run: Run) => void;
}): { state: RunState; stop: () => void } {
  const { accessToken, baseURL, withStreams } = options;
  const enabled = options.enabled ?? true;
  const live = useRef<RunState>({ run: undefined, streams: {}, error: undefined });
  const [shown, flush, reset] = useThrottled<RunState>(live.current, () => {
    const streams: Record<string, unknown[]> = {};
    for (const [key, items] of Object.entries(live.current.streams)) streams[key] = items.slice();
    return { ...live.current, streams };
  }, options.throttleInMs ?? 16);
  const abort = useRef<AbortController | undefined>(undefined);
  const onComplete = useRef(options.onComplete);
  onComplete.current = options.onComplete;

  useEffect(() => {
    live.current = { run: undefined, streams: {}, error: undefined };
    reset(live.current);
    if (!enabled || !runId || !accessToken) return undefined;
    const controller = new AbortController();
    abort.current = controller;
    const state = live.current;
    (async () => {
      try {
        for await (const event of subscribeToRunEvents(runId, {
          accessToken, baseURL, signal: controller.signal,
        })) {
          if (event.type === "run") {
            state.run = event.run;
          } else if (event.type === "chunks" && withStreams) {
            const items = (state.streams[event.stream] ??= []);
            for (const item of event.items) items.push(item);
          } else if (event.type === "end" && state.run) {
            onComplete.current?.(state.run);
            continue;
          } else {
            continue;
          }
          flush();
        }
      } catch (failure) {
        if (!controller.signal.aborted) {
          state.error = failure as Error;
          flush();
        }
      }
    })();
    return () => controller.abort();
  }, [runId, accessToken, baseURL, enabled, withStreams, flush, reset]);
  const stop = useCallback(() => abort.current?.abort(), []);
  return { state: shown, stop };
}

/** A run, live (its status, output, metadata ... on every change). */
export function useRealtimeRun(runId: string | undefined, options: RealtimeOptions & {
  onComplete?: (run: Run) => void;
}): RealtimeRunResult {
  const { state, stop } = useRunEvents(runId, { ...options, withStreams: false });
  return { run: state.run, error: state.error, stop };
}

/** A run and every one of its streams, live. */
export function useRealtimeRunWithStreams<S extends Record<string, unknown[]> = Record<string, unknown[]>>(
  runId: string | undefined, options: RealtimeOptions & { onComplete?: (run: Run) => void },
): RealtimeRunWithStreamsResult<S> {
  const { state, stop } = useRunEvents(runId, { ...options, withStreams: true });
  return { run: state.run, streams: state.streams as Partial<S>, error: state.error, stop };
}

export interface InputStreamSendResult<T> {
  /** Send a record; resolves to its index in the input stream. */
  send: (data: T) => Promise<{ index: number } | undefined>;
  isLoading: boolean;
  error: Error | undefined;
}

/** Send records to a run's input stream (`inputs.define(...)` / `wait()` in the task). */
export function useInputStreamSend<T = unknown>(
  runId: string | undefined, key: string, options: { accessToken: string; baseURL?: string },
): InputStreamSendResult<T> {
  const [isLoading, setLoading] = useState(false);
  const [error, setError] = useState<Error | undefined>(undefined);
  const { accessToken, baseURL } = options;
  const send = useCallback(async (data: T) => {
    if (!runId) {
      const failure = new RunwireError(0, "no_run", "there is no run to send to yet");
      setError(failure);
      return undefined;
    }
    setLoading(true);
    setError(undefined);
    try {
      return await sendInput(runId, key, data, connection({ accessToken, baseURL }));
    } catch (failure) {
      setError(failure as Error);
      return undefined;
    } finally {
      setLoading(false);
    }
  }, [runId, key, accessToken, baseURL]);
  return { send, isLoading, error };
}

export { RunwireError };
export type { Run };
