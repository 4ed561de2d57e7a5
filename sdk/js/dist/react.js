// @runwire/client 0.1.0 (built by sdk/js/build.mjs; do not edit)

// src/react.ts
import { useCallback, useEffect, useLayoutEffect, useRef, useState } from "react";
import {
  RunwireError,
  readStreamBatches,
  sendInput,
  subscribeToRunEvents
} from "./runwire.js";
function defineStream(id) {
  return { id };
}
function useThrottled(initial, take, throttleInMs) {
  const [state, setState] = useState(initial);
  const last = useRef(-Infinity);
  const timer = useRef(void 0);
  const committing = useRef(false);
  const wanted = useRef(false);
  const taker = useRef(take);
  taker.current = take;
  const schedule = useCallback(() => {
    const wait = Math.max(0, Math.ceil(last.current + throttleInMs - performance.now()));
    timer.current = setTimeout(() => {
      timer.current = void 0;
      committing.current = true;
      setState(taker.current());
    }, wait);
  }, [throttleInMs]);
  useLayoutEffect(() => {
    last.current = performance.now();
    committing.current = false;
    if (wanted.current && timer.current === void 0) {
      wanted.current = false;
      schedule();
    }
  }, [state, schedule]);
  useEffect(() => () => {
    clearTimeout(timer.current);
    timer.current = void 0;
  }, []);
  const flush = useCallback(() => {
    if (timer.current !== void 0 || committing.current) {
      wanted.current = true;
      return;
    }
    schedule();
  }, [schedule]);
  const reset = useCallback((value) => {
    clearTimeout(timer.current);
    timer.current = void 0;
    wanted.current = false;
    setState(value);
  }, []);
  return [state, flush, reset];
}
function connection(options) {
  return { accessToken: options.accessToken, baseURL: options.baseURL };
}
function useRealtimeStream(defOrRunId, keyOrRunId, options) {
  const runId = typeof defOrRunId === "string" ? defOrRunId : keyOrRunId;
  const key = typeof defOrRunId === "string" ? keyOrRunId : defOrRunId?.id;
  const { accessToken, baseURL, timeoutInSeconds, startIndex } = options;
  const enabled = options.enabled ?? true;
  const live = useRef({ parts: [], error: void 0, isComplete: false });
  const [shown, flush, reset] = useThrottled(
    live.current,
    () => ({ ...live.current, parts: live.current.parts.slice() }),
    options.throttleInMs ?? 16
  );
  const onData = useRef(options.onData);
  onData.current = options.onData;
  const abort = useRef(void 0);
  useEffect(() => {
    live.current = { parts: [], error: void 0, isComplete: false };
    reset(live.current);
    if (!enabled || !runId || !key || !accessToken) return void 0;
    const controller = new AbortController();
    abort.current = controller;
    const state = live.current;
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
            state.parts.push(chunk);
            onData.current?.(chunk, batch.startIndex + i);
          }
          flush();
        }
        if (!controller.signal.aborted) state.isComplete = true;
      } catch (failure) {
        if (!controller.signal.aborted) state.error = failure;
      }
      if (!controller.signal.aborted) flush();
    })();
    return () => controller.abort();
  }, [runId, key, accessToken, baseURL, timeoutInSeconds, startIndex, enabled, flush, reset]);
  const stop = useCallback(() => abort.current?.abort(), []);
  return { parts: shown.parts, error: shown.error, isComplete: shown.isComplete, stop };
}
function useRunEvents(runId, options) {
  const { accessToken, baseURL, withStreams } = options;
  const enabled = options.enabled ?? true;
  const live = useRef({ run: void 0, streams: {}, error: void 0 });
  const [shown, flush, reset] = useThrottled(live.current, () => {
    const streams = {};
    for (const [key, items] of Object.entries(live.current.streams)) streams[key] = items.slice();
    return { ...live.current, streams };
  }, options.throttleInMs ?? 16);
  const abort = useRef(void 0);
  const onComplete = useRef(options.onComplete);
  onComplete.current = options.onComplete;
  useEffect(() => {
    live.current = { run: void 0, streams: {}, error: void 0 };
    reset(live.current);
    if (!enabled || !runId || !accessToken) return void 0;
    const controller = new AbortController();
    abort.current = controller;
    const state = live.current;
    (async () => {
      try {
        for await (const event of subscribeToRunEvents(runId, {
          accessToken,
          baseURL,
          signal: controller.signal
        })) {
          if (event.type === "run") {
            state.run = event.run;
          } else if (event.type === "chunks" && withStreams) {
            const items = state.streams[event.stream] ??= [];
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
          state.error = failure;
          flush();
        }
      }
    })();
    return () => controller.abort();
  }, [runId, accessToken, baseURL, enabled, withStreams, flush, reset]);
  const stop = useCallback(() => abort.current?.abort(), []);
  return { state: shown, stop };
}
function useRealtimeRun(runId, options) {
  const { state, stop } = useRunEvents(runId, { ...options, withStreams: false });
  return { run: state.run, error: state.error, stop };
}
function useRealtimeRunWithStreams(runId, options) {
  const { state, stop } = useRunEvents(runId, { ...options, withStreams: true });
  return { run: state.run, streams: state.streams, error: state.error, stop };
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
