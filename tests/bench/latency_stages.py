"""Where one chunk's latency goes, stage by stage (a profiling tool, like ``hotpath``).

    python -m tests.bench.latency_stages                       # sqlite, append, 3,000 chunks
    python -m tests.bench.latency_stages --store memory --mode pipe --chunks 5000
    python -m tests.bench.latency_stages --store bare          # the bare baseline's reader

An engine runs in this process; a task writes ``[index, time.time_ns()]`` at 1,000 chunks/s
(``await append`` per chunk, or a ``pipe`` of a paced generator), and a reader in another
process reads the stream. Wrappers around engine internals (in this process only) note, for
every chunk, how long after its stamp it reached each stage:

* ``stage``: the actor's commit cycle staged it (``_Stage.chunks``; on SQLite when the
  cycle's turn to write came);
* ``committed``: the store returned and the cycle applies it (tails, wake-ups);
* ``send0`` / ``send1``: the session starts / finishes sending its ``chunks`` frame (a push
  from the commit cycle, or the read task's own send; ``pushed`` counts the pushes);
* ``recv``: the reader's last socket read before the frame was routed returned (reader
  process: the bytes are in; what follows is websocket parsing and the client);
* ``routed``: the reader's client routed the frame to the read (reader process);
* ``reader``: the reader's ``async for`` got it;
* ``store write``: the time the SQLite write itself took (not cumulative).

``--store bare`` runs ``bench_latency``'s bare trio-websocket baseline instead, with the
same reader-side stages (``recv``, ``reader``), to compare the two readers.

Percentiles skip the first 100 chunks (warm-up). The wall clock is shared by both
processes, so the stages add up; compare them with ``bench_latency``'s bare trio-websocket
baseline (~0.3 ms p50 on the development VM).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from runwire import task

from ._harness import API_KEY, percentile
from .bench_latency import paced, stamps

RATE = 1000.0
WARMUP = 100

_RECV = r"""
import sys, time, trio
last_read = [0]  # when the reader's last socket read returned
_receive_some = trio.SocketStream.receive_some

async def receive_some(self, max_bytes=None):
    data = await _receive_some(self, max_bytes)
    last_read[0] = time.time_ns()
    return data

trio.SocketStream.receive_some = receive_some
"""

_READER = _RECV + r"""
from runwire import _client, connect, streams, tasks
from runwire.transport import Chunks

recv, routed = [], []
route = _client.Client._route

def _route(self, link, frame):
    if isinstance(frame, Chunks) and frame.stream == "stamps":
        stamp = frame.items[-1][1]
        recv.append((last_read[0] - stamp) / 1e6)
        routed.append((time.time_ns() - stamp) / 1e6)
    return route(self, link, frame)

_client.Client._route = _route
stamps = streams.define(id="stamps")

async def main(url, key, mode, n):
    async with connect(url, api_key=key):
        handle = await tasks.trigger("latency-stages", {"n": n, "mode": mode})
        got = [(time.time_ns() - sent) / 1e6 async for _, sent in await stamps.read(handle.id)]
    print("recv", *recv)
    print("routed", *routed)
    print("reader", *got)

trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
"""

# the bare baseline's reader (``bench_latency``'s): trio-websocket, one chunk per message
_BARE_READER = _RECV + f"RATE = {RATE!r}\n" + r"""
import orjson, trio_websocket

async def main(url, key, mode, n):
    recv, got = [], []
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message(orjson.dumps({"op": "paced", "n": n, "rate": RATE}).decode())
        while True:
            frame = orjson.loads(await ws.get_message())
            now = time.time_ns()
            if frame["type"] == "end":
                break
            for _, sent in frame["items"]:
                recv.append((last_read[0] - sent) / 1e6)
                got.append((now - sent) / 1e6)
    print("recv", *recv)
    print("reader", *got)

trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
"""


@task(id="latency-stages")
async def latency_stages(payload: dict[str, Any]) -> int:
    if payload["mode"] == "pipe":
        await stamps.pipe(paced(payload["n"], RATE)).wait_until_complete()
    else:
        async for item in paced(payload["n"], RATE):
            await stamps.append(item)
    return payload["n"]


def _instrument(marks: dict[str, list[float]]) -> None:
    """Wrap the engine's stages (this process only) to note each chunk's time since stamp."""
    import orjson

    from runwire.engine.door import _session
    from runwire.engine.run import _actor
    from runwire.engine.store import _sqlite as _sqlite_store
    from runwire.transport import Chunks, Connection

    def since(stamp: int) -> float:
        return (time.time_ns() - stamp) / 1e6

    chunks = _actor._Stage.chunks

    def staged(self: Any, key: str, values: list[Any], *args: Any, **kwargs: Any) -> Any:
        if key == "stamps" and values:
            stamp = values[-1][1]
            marks["stage"].append(since(stamp))
            self.after.append(lambda: marks["committed"].append(since(stamp)))
        return chunks(self, key, values, *args, **kwargs)

    emit = _session.Session._emit

    async def emitted(self: Any, frame: Any) -> None:
        if isinstance(frame, Chunks) and frame.stream == "stamps":
            stamp = orjson.loads(frame.items[-1])[1]
            marks["send0"].append(since(stamp))
            await emit(self, frame)
            marks["send1"].append(since(stamp))
        else:
            await emit(self, frame)

    send_nowait = Connection.send_nowait

    def pushed(self: Any, frame: Any) -> bool:
        if not (isinstance(frame, Chunks) and frame.stream == "stamps"):
            return send_nowait(self, frame)
        stamp = orjson.loads(frame.items[-1])[1]
        began = since(stamp)
        sent = send_nowait(self, frame)
        if sent:
            marks["send0"].append(began)
            marks["send1"].append(since(stamp))
            marks["pushed"].append(1.0)
        return sent

    write = _sqlite_store.SqliteStore._write

    def written(self: Any, group: Any) -> None:
        began = time.perf_counter_ns()
        write(self, group)
        marks["store write"].append((time.perf_counter_ns() - began) / 1e6)

    _actor._Stage.chunks = staged  # type: ignore[method-assign]
    _session.Session._emit = emitted  # type: ignore[method-assign]
    Connection.send_nowait = pushed  # type: ignore[method-assign]
    _sqlite_store.SqliteStore._write = written  # type: ignore[method-assign]


def percentiles(values: list[float]) -> str:
    p50, p90, p99 = (percentile(values[WARMUP:], q) for q in (50, 90, 99))
    return f"p50 {p50:6.3f}  p90 {p90:6.3f}  p99 {p99:6.3f} ms"


async def measure(store: str, mode: str, n: int) -> dict[str, list[float]]:
    from runwire.engine import open_engine

    marks: dict[str, list[float]] = {k: [] for k in
                                     ("stage", "committed", "send0", "send1", "store write",
                                      "pushed")}
    if store == "bare":
        done = await _bare(n)
    else:
        _instrument(marks)
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/stages.db" if store == "sqlite" else "memory://"
            async with open_engine([latency_stages], store=url, api_key=API_KEY,
                                   host="127.0.0.1", port=0) as eng:
                done = await trio.run_process(
                    [sys.executable, "-c", _READER, eng.url, API_KEY, mode, str(n)],
                    capture_stdout=True, stderr=subprocess.STDOUT, check=False)
    output = done.stdout.decode()
    if done.returncode:
        raise RuntimeError(f"the reader failed:\n{output}")
    for line in output.splitlines():
        name, *values = line.split()
        if name in ("recv", "routed", "reader"):
            marks[name] = [float(v) for v in values]
    if len(marks["reader"]) != n:
        raise RuntimeError(f"the reader got {len(marks['reader'])} of {n} chunks")
    return marks


async def _bare(n: int) -> subprocess.CompletedProcess[bytes]:
    """``bench_latency``'s bare baseline: a trio-websocket server pacing one chunk per
    message, in this process; the reader notes the same reader-side stages."""
    import trio_websocket

    from ._baselines import _trio_handler

    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: trio_websocket.serve_websocket(
            _trio_handler, "127.0.0.1", 0, ssl_context=None, handler_nursery=nursery,
            task_status=task_status))
        done = await trio.run_process(
            [sys.executable, "-c", _BARE_READER, f"ws://127.0.0.1:{server.port}", "-", "-",
             str(n)], capture_stdout=True, stderr=subprocess.STDOUT, check=False)
        nursery.cancel_scope.cancel()
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=["memory", "sqlite", "bare"], default="sqlite",
                        help="bare: bench_latency's trio-websocket baseline (reader side only)")
    parser.add_argument("--mode", choices=["append", "pipe"], default="append")
    parser.add_argument("--chunks", type=int, default=3000)
    args = parser.parse_args(argv)
    marks = trio.run(measure, args.store, args.mode, args.chunks)
    print(f"{args.store} {args.mode}, {args.chunks} chunks at {RATE:,.0f}/s; time since the "
          f"writer's stamp (store write: its own duration)")
    for name in ("stage", "committed", "send0", "send1", "recv", "routed", "reader",
                 "store write"):
        if marks.get(name):
            print(f"  {name:12s} {percentiles(marks[name])}")
    if args.store != "bare":
        print(f"  pushed from the commit cycle: {len(marks['pushed'])} of "
              f"{len(marks['send0'])} chunks frames")


if __name__ == "__main__":
    main()
