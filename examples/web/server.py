"""Streaming an AI completion into a web page, with a Stop button: the runwire engine, a
backend that triggers runs, and two pages with no build step (plain JS and React).

The ``chat`` task streams a (fake) model's answer token by token to its ``ai`` output
stream and stops when a ``stop`` record arrives on its input stream. The page asks the
backend (``POST /api/chat``) to start a run; the backend, which holds the API key, triggers
it and hands the page only the run's id and its public access token. The page reads the
stream and sends ``stop`` straight to the engine, with ``/v1/js/runwire.js`` (``chat.html``)
or the React hooks of ``/v1/js/react.js`` (``react_chat.html``).

    python -m examples.web.server            # then open the printed URLs
    python -m examples.web.server --port 8000

The fake model stands in for a real one (``openai``/``anthropic`` with ``runwire.ai`` work
the same: every token is a chunk of the ``ai`` stream).
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import trio

from runwire import streams, task
from runwire.engine import EngineThread

HERE = Path(__file__).parent
PAGES = {"/": "chat.html", "/chat.html": "chat.html", "/react_chat.html": "react_chat.html",
         "/react_chat.js": "react_chat.js"}
ANSWER = ("Realtime streams let a task hand its output to a browser as it is made: every token "
          "is a chunk with an index, so a page that reconnects picks up where it stopped, and "
          "a Stop button is one record on an input stream. ") * 4

ai = streams.define(id="ai", type=str)
stop = streams.input(id="stop")


async def fake_model(prompt: str, delay: float):
    """Yields an answer token by token, like a model streaming its completion."""
    for word in ANSWER.split():
        await trio.sleep(delay)
        yield word + " "


@task(id="chat")
async def chat(payload: dict[str, Any]) -> dict[str, Any]:
    tokens = 0
    stopped = False
    with trio.CancelScope() as generation:
        def on_stop(_: Any) -> None:
            nonlocal stopped
            stopped = True
            generation.cancel()

        stop.on(on_stop)
        async for token in fake_model(payload.get("prompt", ""), payload.get("delay", 0.03)):
            await ai.append(token)
            tokens += 1
    return {"tokens": tokens, "stopped": stopped}


def make_backend(engine_url: str, api_key: str) -> type[BaseHTTPRequestHandler]:
    class Backend(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            name = PAGES.get(self.path.split("?")[0])
            if name is None:
                self.send_error(404)
                return
            body = (HERE / name).read_bytes().replace(b"{{ENGINE}}", engine_url.encode())
            self._answer(200, body, "text/html" if name.endswith(".html") else "text/javascript")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/api/chat":
                self.send_error(404)
                return
            length = int(self.headers.get("content-length") or 0)
            try:
                asked = json.loads(self.rfile.read(length) or b"{}")
                prompt = str(asked["prompt"])[:2000]
                delay = float(asked.get("delay", 0.03))
            except (ValueError, KeyError, TypeError):
                self._answer(422, b'{"message": "send {\\"prompt\\": ...}"}', "application/json")
                return
            answer = httpx.post(f"{engine_url}/v1/api/tasks/chat/trigger",
                                headers={"Authorization": f"Bearer {api_key}"},
                                json={"payload": {"prompt": prompt, "delay": delay}})
            answer.raise_for_status()
            run = answer.json()  # the page gets the run's own token, never the API key
            self._answer(200, json.dumps({"runId": run["id"],
                                          "token": run["public_access_token"]}).encode(),
                         "application/json")

        def _answer(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Backend


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.web.server",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="the pages' port (0: any free one)")
    args = parser.parse_args()
    with EngineThread([chat]) as engine:
        engine_url = engine.url.replace("ws://", "http://").removesuffix("/v1")
        server = ThreadingHTTPServer(("127.0.0.1", args.port),
                                     make_backend(engine_url, engine.api_key))
        base = f"http://127.0.0.1:{server.server_address[1]}"
        print(f"engine at {engine_url} (dashboard: {engine_url}/dashboard, "
              f"API key {engine.api_key})")
        print(f"plain page at {base}/chat.html")
        print(f"React page at {base}/react_chat.html", flush=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            thread.join()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
