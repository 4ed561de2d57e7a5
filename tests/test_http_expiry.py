"""HTTP reads end when their token expires (issue 19, part 7), as the websocket's do.

A run stream's ``live=long-poll`` that is waiting is answered ``401``; a ``live=sse`` response
and the run's events SSE send an ``error`` event with code ``unauthorized`` and end; a
request made after that with the same token is ``401``. Real sockets, so real time: the
tokens live 1.5 s.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import trio

from runwire import streams, task
from runwire.engine import open_engine

from .helpers import API_KEY, bounded, go, until_go

ticks = streams.define(id="ticks", type=str)
LIFETIME = 1.5


@task(id="expiry.parked")
async def parked(payload: Any) -> str:
    """Writes one chunk, then waits (so reads of it wait too)."""
    await ticks.append("first")
    await until_go()
    return "done"


async def _sse_events(client: httpx.AsyncClient, url: str,
                      headers: dict[str, str]) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    async with client.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        kind = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data:"):
                events.append((kind, orjson.loads(line[5:])))
    return events


@bounded(30)
async def test_http_reads_end_with_unauthorized_when_their_token_expires() -> None:
    async with open_engine([parked], api_key=API_KEY, port=0) as eng:
        async with eng.connect():
            run_id = (await parked.trigger({})).id
        token, _ = eng.service.issue_token([f"read:runs:{run_id}"], LIFETIME)
        bearer = {"authorization": f"Bearer {token}"}
        base = f"/v1/runs/{run_id}/streams/ticks"
        async with httpx.AsyncClient(base_url=eng.http_url, timeout=20) as client:
            while (await client.get(base, params={"offset": "-1"}, headers=bearer)
                   ).json() != ["first"]:
                await trio.sleep(0.01)
            tail = (await client.get(base, params={"offset": "-1"}, headers=bearer)
                    ).headers["stream-next-offset"]
            began = trio.current_time()
            sse, events = await _both(client, base, tail, bearer, run_id)
            # both ended at the expiry, not at the SSE interval (60 s)
            assert trio.current_time() - began < LIFETIME + 5
            assert sse[-1] == ("error", {"code": "unauthorized", "message": sse[-1][1]["message"]})
            assert "expired" in sse[-1][1]["message"]
            assert events[0][0] == "run" and events[-1][0] == "error"
            assert events[-1][1]["code"] == "unauthorized"
            assert all(kind != "end" for kind, _ in events)
            # the long-poll that waited through the expiry
            r = await client.get(base, params={"offset": tail, "live": "long-poll"},
                                 headers=bearer)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        async with eng.connect():
            await eng.send_input(run_id, go.id, True)


async def _both(client: httpx.AsyncClient, base: str, tail: str, bearer: dict[str, str],
                run_id: str) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """A live SSE read of the stream, the run's events and a long-poll, all at once; the
    long-poll must be answered 401 when the token expires mid-wait."""
    found: dict[str, Any] = {}

    async def sse() -> None:
        found["sse"] = await _sse_events(client, base + f"?offset={tail}&live=sse", bearer)

    async def events() -> None:
        found["events"] = await _sse_events(client, f"/v1/runs/{run_id}/events", bearer)

    async def long_poll() -> None:
        r = await client.get(base, params={"offset": tail, "live": "long-poll"},
                             headers=bearer)
        found["poll"] = r

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sse)
        nursery.start_soon(events)
        nursery.start_soon(long_poll)
    poll = found["poll"]
    assert poll.status_code == 401, poll.text
    assert poll.json()["code"] == "unauthorized" and "expired" in poll.json()["message"]
    return found["sse"], found["events"]


big = streams.define(id="big", type=str)


@task(id="expiry.big")
async def big_writer(payload: Any) -> str:
    """Writes 8 MiB of text, then waits."""
    await big.pipe("x" * 65536 for _ in range(128)).wait_until_complete()
    await until_go()
    return "done"


def _chunked_body(raw: bytes) -> tuple[bytes, bool]:
    """The body of a chunked HTTP/1.1 response (after its head), and whether it ended with
    the last chunk. An answer cut off at the end is fine; a bad chunk size line is not."""
    body = bytearray()
    at = raw.index(b"\r\n\r\n") + 4
    while True:
        line_end = raw.find(b"\r\n", at)
        if line_end < 0:
            return bytes(body), False  # cut off at a size line
        size = int(raw[at:line_end], 16)  # ValueError: the framing is broken
        if size == 0:
            return bytes(body), True
        start, end = line_end + 2, line_end + 2 + size
        if len(raw) < end + 2:
            return bytes(body) + raw[start:end], False  # cut off inside a chunk
        assert raw[end:end + 2] == b"\r\n", "a chunk not followed by CRLF: broken framing"
        body += raw[start:end]
        at = end + 2


@bounded(40)
async def test_an_sse_write_cut_off_by_the_expiry_ends_the_connection_not_its_framing() -> None:
    """A token that expires while an SSE write waits for a slow reader cuts that write off
    partway; the expiry event must not follow half a chunk (the connection is closed)."""
    import socket as stdlib_socket

    async with open_engine([big_writer], api_key=API_KEY, port=0) as eng:
        async with eng.connect():
            run_id = (await big_writer.trigger({})).id
            reader = await big.read(run_id)
            count = 0
            async for _ in reader:
                count += 1
                if count == 128:
                    break
        token, _ = eng.service.issue_token([f"read:runs:{run_id}"], LIFETIME)
        host, port = eng.http_url.removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket()
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
        await sock.connect((host, int(port)))
        stream = trio.SocketStream(sock)
        await stream.send_all(
            f"GET /v1/runs/{run_id}/streams/big?offset=-1&live=sse HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        await trio.sleep(LIFETIME + 1)  # not reading: the engine's write waits, then expires
        raw = bytearray()
        while True:  # to the end of the connection (or of what the engine sends)
            with trio.move_on_after(3) as quiet:
                data = await stream.receive_some(1 << 20)
            if quiet.cancelled_caught or not data:
                break
            raw += data
        await stream.aclose()
        assert raw.startswith(b"HTTP/1.1 200")
        body, complete = _chunked_body(bytes(raw))
        if complete:  # the whole stream got out before the expiry: then the event ends it
            assert body.endswith(b"event: error\n" + body.rsplit(b"event: error\n", 1)[1])
        else:  # cut off: what did get out is whole events up to the cut, and nothing after
            assert b"unauthorized" not in body
        async with eng.connect():
            await eng.send_input(run_id, go.id, True)
