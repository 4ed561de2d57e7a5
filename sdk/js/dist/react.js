// @runwire/client 0.1.0 (built by sdk/js/build.mjs; do not edit)

// src/react.ts
import { useCallback, useEffect, useRef, useState } from "react";
import {
  RunwireError,
  readStreamBatches,
  sendInput,
  subscribeToRunEvents
} from "./runwire.js";
function defineStream(id) {
  return { id };
}
function useThrottledRender(throttleInMs) {
  const [, setTick] = useState(0);
  const last = useRef(0);
  const timer = useRef(void 0);
  useEffect(() => () => clearTimeout(timer.current), []);
  return useCallback(() => {
    if (timer.current !== void 0) return;
    const wait = Math.max(0, last.current + throttleInMs - performance.now());
    timer.current = setTimeout(() => {
      timer.current = void 0;
      last.current = performance.now();
      setTick((n) => n + 1);
    }, wait);
  }, [throttleInMs]);
}
function connection(options) {
  return { accessToken: options.accessToken, baseURL: options.baseURL };
}
function useRealtimeStream(defOrRunId, keyOrRunId, options) {
  const runId = typeof defOrRunId === "string" ? defOrRunId : keyOrRunId;
  const key = typeof defOrRunId === "string" ? keyOrRunId : defOrRunId?.id;
  const { accessToken, baseURL, timeoutInSeconds, startIndex } = options;
  const enabled = options.enabled ?? true;
  const render = useThrottledRender(options.throttleInMs ?? 16);
  const parts = useRef([]);
  const shown = useRef({ length: 0, value: [] });
  const [error, setError] = useState(void 0);
  const [isComplete, setComplete] = useState(false);
  const onData = useRef(options.onData);
  onData.current = options.onData;
  const abort = useRef(void 0);
  useEffect(() => {
    parts.current = [];
    shown.current = { length: 0, value: [] };
    setError(void 0);
    setComplete(false);
    if (!enabled || !runId || !key || !accessToken) return void 0;
    const controller = new AbortController();
    abort.current = controller;
    (async () => {
      try {
        for await (const batch of readStreamBatches(runId, key, {
          accessToken,
          baseURL,
          timeoutInSeconds,
          startIndex,
          signal: controller.signal
        })) {
          for (let i = 0; i < batch.items.length; i++) {
            const chunk = batch.items[i];
            parts.current.push(chunk);
            onData.current?.(chunk, batch.startIndex + i);
          }
          render();
        }
        if (!controller.signal.aborted) setComplete(true);
      } catch (failure) {
        if (!controller.signal.aborted) setError(failure);
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
function useRunEvents(runId, options) {
  const { accessToken, baseURL, withStreams } = options;
  const enabled = options.enabled ?? true;
  const render = useThrottledRender(options.throttleInMs ?? 16);
  const state = useRef({ run: void 0, streams: {}, version: 0 });
  const [error, setError] = useState(void 0);
  const abort = useRef(void 0);
  const onComplete = useRef(options.onComplete);
  onComplete.current = options.onComplete;
  useEffect(() => {
    state.current = { run: void 0, streams: {}, version: 0 };
    setError(void 0);
    if (!enabled || !runId || !accessToken) return void 0;
    const controller = new AbortController();
    abort.current = controller;
    (async () => {
      try {
        for await (const event of subscribeToRunEvents(runId, {
          accessToken,
          baseURL,
          signal: controller.signal
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
        if (!controller.signal.aborted) setError(failure);
      }
    })();
    return () => controller.abort();
  }, [runId, accessToken, baseURL, enabled, withStreams, render]);
  const stop = useCallback(() => abort.current?.abort(), []);
  return { state: state.current, error, stop };
}
function useRealtimeRun(runId, options) {
  const { state, error, stop } = useRunEvents(runId, { ...options, withStreams: false });
  return { run: state.run, error, stop };
}
function useRealtimeRunWithStreams(runId, options) {
  const { state, error, stop } = useRunEvents(runId, { ...options, withStreams: true });
  const copy = useRef({ version: -1, streams: {} });
  if (copy.current.version !== state.version) {
    const streams = {};
    for (const [key, items] of Object.entries(state.streams)) streams[key] = items.slice();
    copy.current = { version: state.version, streams };
  }
  return { run: state.run, streams: copy.current.streams, error, stop };
}
function useInputStreamSend(runId, key, options) {
  const [isLoading, setLoading] = useState(false);
  const [error, setError] = useState(void 0);
  const { accessToken, baseURL } = options;
  const send = useCallback(async (data) => {
    if (!runId) {
      const failure = new RunwireError(0, "no_run", "there is no run to send to yet");
      setError(failure);
      return void 0;
    }
    setLoading(true);
    setError(void 0);
    try {
      return await sendInput(runId, key, data, connection({ accessToken, baseURL }));
    } catch (failure) {
      setError(failure);
      return void 0;
    } finally {
      setLoading(false);
    }
  }, [runId, key, accessToken, baseURL]);
  return { send, isLoading, error };
}
export {
  RunwireError,
  defineStream,
  useInputStreamSend,
  useRealtimeRun,
  useRealtimeRunWithStreams,
  useRealtimeStream
};
