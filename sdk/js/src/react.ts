/**
 * React hooks on the runwire client (docs/browser.md). React is a peer: this module imports it
 * from the bare specifier `react`, so a page gives it with an import map and a bundler with its
 * own copy; the client comes from `./runwire.js` next to this file.
 *
 * Every hook re-renders at most once per `throttleInMs` (default 16 ms) however fast chunks
 * come; `onData` is called for every chunk as it arrives.
 */

import { useCallback, useEffect, useRef, useState } from "react";
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

/** Collects values and re-renders at most once per `throttleInMs`. */
function useThrottledRender(throttleInMs: number): () => void {
  const [, setTick] = useState(0);
  const last = useRef(0);
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  useEffect(() => () => clearTimeout(timer.current), []);
  return useCallback(() => {
    if (timer.current !== undefined) return;
    const wait = Math.max(0, last.current + throttleInMs - performance.now());
    timer.current = setTimeout(() => {
      timer.current = undefined;
      last.current = performance.now();
      setTick((n) => n + 1);
    }, wait);
  }, [throttleInMs]);
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
  const render = useThrottledRender(options.throttleInMs ?? 16);
  const parts = useRef<T[]>([]);
  const shown = useRef<{ length: number; value: T[] }>({ length: 0, value: [] });
  const [error, setError] = useState<Error | undefined>(undefined);
  const [isComplete, setComplete] = useState(false);
  const onData = useRef(options.onData);
  onData.current = options.onData;
  const abort = useRef<AbortController | undefined>(undefined);

  useEffect(() => {
    parts.current = [];
    shown.current = { length: 0, value: [] };
    setError(undefined);
    setComplete(false);
    if (!enabled || !runId || !key || !accessToken) return undefined;
    const controller = new AbortController();
    abort.current = controller;
    (async () => {
      try {
        for await (const batch of readStreamBatches<T>(runId, key, {
          accessToken, baseURL, timeoutInSeconds, startIndex, signal: controller.signal,
        })) {
          for (let i = 0; i < batch.items.length; i++) {
            const chunk = batch.items[i] as T;
            parts.current.push(chunk);
            onData.current?.(chunk, batch.startIndex + i);
          }
          render();
        }
        if (!controller.signal.aborted) setComplete(true);
      } catch (failure) {
        if (!controller.signal.aborted) setError(failure as Error);
      }
    })();
    return () => controller.abort();
  }, [runId, key, accessToken, baseURL, timeoutInSeconds, startIndex, enabled, render]);

  if (shown.current.length !== parts.current.length) {
    shown.current = { length: parts.current.length, value: parts.current.slice() };
  }
  const stop = useCallback(() => abort.current?.abort(), []);
  return { parts: shown.current.value, error, isComplete, stop };
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
  version: number;
}

function useRunEvents(runId: string | undefined, options: RealtimeOptions & {
  withStreams: boolean; onComplete?: (run: Run) => void;
}): { state: RunState; error: Error | undefined; stop: () => void } {
  const { accessToken, baseURL, withStreams } = options;
  const enabled = options.enabled ?? true;
  const render = useThrottledRender(options.throttleInMs ?? 16);
  const state = useRef<RunState>({ run: undefined, streams: {}, version: 0 });
  const [error, setError] = useState<Error | undefined>(undefined);
  const abort = useRef<AbortController | undefined>(undefined);
  const onComplete = useRef(options.onComplete);
  onComplete.current = options.onComplete;

  useEffect(() => {
    state.current = { run: undefined, streams: {}, version: 0 };
    setError(undefined);
    if (!enabled || !runId || !accessToken) return undefined;
    const controller = new AbortController();
    abort.current = controller;
    (async () => {
      try {
        for await (const event of subscribeToRunEvents(runId, {
          accessToken, baseURL, signal: controller.signal,
        })) {
          const current = state.current;
          if (event.type === "run") {
            current.run = event.run;
          } else if (event.type === "chunks" && withStreams) {
            (current.streams[event.stream] ??= []).push(...event.items);
          } else if (event.type === "end" && current.run) {
            onComplete.current?.(current.run);
          } else {
            continue;
          }
          current.version++;
          render();
        }
      } catch (failure) {
        if (!controller.signal.aborted) setError(failure as Error);
      }
    })();
    return () => controller.abort();
  }, [runId, accessToken, baseURL, enabled, withStreams, render]);
  const stop = useCallback(() => abort.current?.abort(), []);
  return { state: state.current, error, stop };
}

/** A run, live (its status, output, metadata ... on every change). */
export function useRealtimeRun(runId: string | undefined, options: RealtimeOptions & {
  onComplete?: (run: Run) => void;
}): RealtimeRunResult {
  const { state, error, stop } = useRunEvents(runId, { ...options, withStreams: false });
  return { run: state.run, error, stop };
}

/** A run and every one of its streams, live. */
export function useRealtimeRunWithStreams<S extends Record<string, unknown[]> = Record<string, unknown[]>>(
  runId: string | undefined, options: RealtimeOptions & { onComplete?: (run: Run) => void },
): RealtimeRunWithStreamsResult<S> {
  const { state, error, stop } = useRunEvents(runId, { ...options, withStreams: true });
  const copy = useRef<{ version: number; streams: Partial<S> }>({ version: -1, streams: {} });
  if (copy.current.version !== state.version) {
    const streams: Record<string, unknown[]> = {};
    for (const [key, items] of Object.entries(state.streams)) streams[key] = items.slice();
    copy.current = { version: state.version, streams: streams as Partial<S> };
  }
  return { run: state.run, streams: copy.current.streams, error, stop };
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
