"""The engine's memory against hostile clients, measured on a real engine process (RSS).

    python -m tests.probe_memory [--connections 1] [--reads 1024] [--half-sent 0]

Starts ``python -m runwire.engine serve --tasks tests.probe_memory`` on a SQLite store in a
temporary folder, stores one 20 MB stream (20,000 chunks of 1,000 characters), then:

- ``--connections`` websockets (API key) each open ``--reads`` reads of that stream and never
  read a byte (issue 19: one such connection took an engine from 93 MB to 1.17 GB);
- ``--half-sent`` websockets each send 15 MiB of a 16 MiB message after ``hello`` and stop
  (40 of them: +334 to +641 MB, held for ever).

It prints the engine's RSS (``VmRSS`` of ``/proc/PID/status``) before, and the highest seen
over ``--settle`` seconds after (``--rounds N``: N times over, with new clients each time, to
see whether what the last round's clients held was given back; ``--keep``: the earlier
rounds' clients stay connected meanwhile, as an attacker's would). ``docs/security.md``
records the figures. Run it with a
``PYTHONPATH`` holding another build of ``runwire`` to measure that one (the engine process
imports whichever ``runwire`` comes first).
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import trio
import trio_websocket

from runwire import streams, task

API_KEY = "probe-api-key-0123456789"
CHUNKS = 20_000
CHUNK = "x" * 1000
#: Half-sent connections the engine has dropped so far.
DROPPED = 0


@task(id="probe.big")
async def big(payload: object) -> int:
    """A 20 MB stream."""
    await streams.pipe("big", (CHUNK for _ in range(CHUNKS))).wait_until_complete()
    return CHUNKS


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found is not None
    return int(found.group(1)) / 1024


async def _engine(folder: str, nursery: trio.Nursery) -> tuple[trio.Process, str]:
    command = [sys.executable, "-m", "runwire.engine", "serve", "--tasks", "tests.probe_memory",
               "--store", f"sqlite:///{folder}/probe.db", "--port", "0", "--api-key", API_KEY,
               "--log-level", "WARNING"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT,
                                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = trio.Event()
    found: list[str] = []

    async def read_output() -> None:
        assert process.stdout is not None
        buffer = b""
        async for data in process.stdout:
            buffer += data
            match = re.search(rb"serving (ws://\S+)", buffer)
            if match and not found:
                found.append(match.group(1).decode())
                url.set()

    nursery.start_soon(read_output)
    with trio.fail_after(30):
        await url.wait()
    return process, found[0]


async def _hello(ws: trio_websocket.WebSocketConnection) -> None:
    await ws.send_message(orjson.dumps({"type": "hello", "protocol": 1,
                                        "token": API_KEY}).decode())
    await ws.get_message()


async def _unread_reads(url: str, run: str, reads: int, nursery: trio.Nursery) -> None:
    ws = await trio_websocket.connect_websocket_url(nursery, url, message_queue_size=1)
    await _hello(ws)
    for rid in range(1, reads + 1):
        await ws.send_message(orjson.dumps({"type": "read", "id": rid, "run": run,
                                            "stream": "big", "timeout_s": None}).decode())


async def _half_sent(port: int, nursery: trio.Nursery) -> None:
    """A websocket by hand: hello, then 15 MiB of a 16 MiB text frame, then nothing."""
    import wsproto
    from wsproto.events import AcceptConnection, Request, TextMessage

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target="/v1")))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(await stream.receive_some(65536))
    await stream.send_all(ws.send(TextMessage(data=orjson.dumps(
        {"type": "hello", "protocol": 1, "token": API_KEY}).decode())))
    size = 16 * 1024 * 1024 - 64
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", size) + b"\0\0\0\0"
    body = b'{"type":"send","id":1,"run":"r","stream":"s","data":"' + b"x" * (15 << 20)

    async def hold() -> None:
        global DROPPED
        try:
            await stream.send_all(header + body)
            while await stream.receive_some(65536):  # the engine's close frame, then EOF
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        DROPPED += 1  # the engine dropped it (or the send failed: it did too)
        await trio.sleep_forever()  # (--keep: the socket is not given back meanwhile)

    nursery.start_soon(hold)


async def main(args: argparse.Namespace) -> None:
    import runwire

    with tempfile.TemporaryDirectory() as folder:
        async with trio.open_nursery() as nursery:
            process, url = await _engine(folder, nursery)
            try:
                async with runwire.connect(url, api_key=API_KEY):
                    handle = await big.trigger(None)
                    async for run in runwire.runs.subscribe_to_run(handle.id):
                        if run.is_finished:
                            break
                await trio.sleep(1)
                before = rss_mb(process.pid)
                port = int(url.rsplit(":", 1)[1].split("/")[0])
                async with trio.open_nursery() as kept:  # clients that stay (--keep)
                    for round_ in range(1, args.rounds + 1):
                        async with trio.open_nursery() as clients:
                            where = kept if args.keep else clients
                            for _ in range(args.connections):
                                await _unread_reads(url, handle.id, args.reads, where)
                            for _ in range(args.half_sent):
                                await _half_sent(port, where)
                            peak = before
                            with trio.move_on_after(args.settle):
                                while True:
                                    peak = max(peak, rss_mb(process.pid))
                                    await trio.sleep(0.1)
                            after = rss_mb(process.pid)
                            clients.cancel_scope.cancel()
                        print(f"round {round_}: engine RSS {before:.0f} MB before, {peak:.0f} "
                              f"MB at most over {args.settle:g} s ({after:.0f} MB at the end): "
                              f"{args.connections} connection(s) x {args.reads} unread reads, "
                              f"{args.half_sent} half-sent message(s); {DROPPED} half-sent "
                              f"connection(s) dropped by the engine so far", flush=True)
                    kept.cancel_scope.cancel()
            finally:
                process.kill()
                await process.wait()
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--reads", type=int, default=1024)
    parser.add_argument("--half-sent", type=int, default=0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="do it again with new clients (each round lasts --settle s)")
    parser.add_argument("--keep", action="store_true",
                        help="the clients of a round stay connected through later rounds")
    trio.run(main, parser.parse_args())
