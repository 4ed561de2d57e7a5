// The React version of chat.html: useRealtimeStream for the tokens, useRealtimeRun for the
// run's status and output, useInputStreamSend for the Stop button. (No JSX: no build step.)
import React, { useState } from "react";
import { createRoot } from "react-dom/client";
import { useInputStreamSend, useRealtimeRun, useRealtimeStream } from "runwire/react";

const h = React.createElement;
const baseURL = new URL(import.meta.resolve("runwire/react")).origin;

function Answer({ runId, token }) {
  const { parts, error } = useRealtimeStream(runId, "ai", { accessToken: token, baseURL });
  const { run } = useRealtimeRun(runId, { accessToken: token, baseURL });
  const { send, isLoading } = useInputStreamSend(runId, "stop", { accessToken: token, baseURL });
  const finished = run && run.finished_at;
  return h("div", null,
    h("button", { className: "stop", disabled: finished || isLoading,
                  onClick: () => send({ reason: "user" }) }, "Stop"),
    h("p", { className: "answer" }, parts.join("")),
    h("p", { className: "status" },
      error ? error.message
        : !finished ? (run ? run.status.toLowerCase() : "starting")
          : run.output.stopped ? `stopped after ${run.output.tokens} tokens`
            : `done: ${run.output.tokens} tokens`));
}

function App() {
  const [prompt, setPrompt] = useState("What are realtime streams?");
  const [chat, setChat] = useState(null);
  async function ask(event) {
    event.preventDefault();
    const response = await fetch("/api/chat", { method: "POST", body: JSON.stringify({ prompt }) });
    setChat(await response.json());  // {runId, token}: the run's own public token
  }
  return h("main", null,
    h("form", { onSubmit: ask },
      h("input", { value: prompt, size: 50, onChange: (e) => setPrompt(e.target.value) }),
      h("button", { className: "ask" }, "Ask")),
    chat ? h(Answer, { key: chat.runId, ...chat }) : null);
}

createRoot(document.getElementById("root")).render(h(App));
