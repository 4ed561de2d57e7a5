"""Fake OpenAI-compatible and Anthropic-compatible servers on loopback (no network).

They speak the two APIs' streaming formats (Server-Sent Events) closely enough for the real
``openai`` and ``anthropic`` async SDKs: ``POST /v1/chat/completions`` with ``stream: true``
and ``POST /v1/messages`` with ``stream: true``. What they answer depends on the model name:
``*-tools`` adds a tool call after the text, ``*-broken`` drops the connection after the
second text delta. The text is :data:`WORDS`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["Structured ", "concurrency ", "keeps ", "every ", "task ", "owned."]
TOOL_ARGS = ['{"city": ', '"Paris", ', '"unit": "C"}']


def _openai_events(model: str) -> Iterator[tuple[str | None, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield None, chunk({"role": "assistant", "content": ""})
    for i, word in enumerate(WORDS):
        if model.endswith("-broken") and i == 2:
            raise ConnectionAbortedError("the fake server drops the connection")
        yield None, chunk({"content": word})
    if model.endswith("-tools"):
        yield None, chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": "get_weather",
                                                        "arguments": ""}}]})
        for part in TOOL_ARGS:
            yield None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
        yield None, chunk({}, "tool_calls")
    else:
        yield None, chunk({}, "stop")
    yield None, "[DONE]"


def _anthropic_events(model: str) -> Iterator[tuple[str | None, Any]]:
    yield "message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 0}}}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}
    for i, word in enumerate(WORDS):
        if model.endswith("-broken") and i == 2:
            raise ConnectionAbortedError("the fake server drops the connection")
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": word}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    stop = "end_turn"
    if model.endswith("-tools"):
        stop = "tool_use"
        yield "content_block_start", {"type": "content_block_start", "index": 1,
                                      "content_block": {"type": "tool_use", "id": "toolu_1",
                                                        "name": "get_weather", "input": {}}}
        for part in TOOL_ARGS:
            yield "content_block_delta", {"type": "content_block_delta", "index": 1,
                                          "delta": {"type": "input_json_delta",
                                                    "partial_json": part}}
        yield "content_block_stop", {"type": "content_block_stop", "index": 1}
    yield "message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": stop, "stop_sequence": None},
                            "usage": {"output_tokens": 12}}
    yield "message_stop", {"type": "message_stop"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked bodies: a dropped connection is not an end

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        if self.path.endswith("/chat/completions"):
            events = _openai_events(body["model"])
        elif self.path.endswith("/messages"):
            events = _anthropic_events(body["model"])
        else:
            self.send_error(404)
            return
        self.server.requests.append((self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for event, data in events:
                text = data if isinstance(data, str) else json.dumps(data)
                head = f"event: {event}\n" if event else ""
                payload = f"{head}data: {text}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except ConnectionAbortedError:  # no last chunk: the client sees a broken body
            self.wfile.flush()
        self.close_connection = True


@contextmanager
def fake_llm_server() -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    """A server on a free loopback port: its base URL and the requests it got."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests  # type: ignore
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
