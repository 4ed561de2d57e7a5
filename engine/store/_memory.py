"""``memory://``: the Store in plain dicts. For tests and throwaway engines; nothing survives."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import attrs
import orjson
import trio

from runwire.transport import json_bytes

from ._base import (
    Batch, DurableStream, Store, StoredRecord, StoredToken, StreamState, page_of_runs,
)
from ._errors import IndexGapError


class _Stream:
    __slots__ = ("items", "nbytes", "ended")

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.nbytes = 0
        self.ended = False


class MemoryStore(Store):
    """Everything in memory; ``commit`` is atomic because it never awaits in the middle."""

    scheme = "memory"

    def __init__(self) -> None:
        self._runs: dict[str, bytes] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._streams: dict[str, dict[str, _Stream]] = {}
        self._seqs: dict[str, dict[tuple[str, str], int]] = {}
        self._records: dict[str, dict[str, list[StoredRecord]]] = {}
        self._waitpoints: dict[tuple[str, str], tuple[bytes, float | None]] = {}
        self._tokens: dict[str, StoredToken] = {}
        self._token_keys: dict[str, str] = {}
        self._ds: dict[str, DurableStream] = {}
        self._ds_items: dict[str, tuple[list[int], list[bytes]]] = {}  # starts, data
        self._ds_producers: dict[tuple[str, str], tuple[int, int]] = {}

    async def commit(self, batch: Batch) -> None:  # (commit_staged: the Store default)
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: nothing is written
        self._write(batch)
        await trio.lowlevel.cancel_shielded_checkpoint()  # written: let others run, then return

    async def commit_no_pause(self, batch: Batch) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: nothing is written
        self._write(batch)  # (nothing to wait for: the caller yields next, see the Store)

    def _write(self, batch: Batch) -> None:
        self._check_gaps(batch)  # before writing anything: a refused batch leaves no trace
        for run in batch.runs:
            self._runs[run["id"]] = json_bytes(run)  # compact, and a private copy
            if run.get("idempotency_key") is not None:
                self._by_key[(run["task_id"], run["idempotency_key"])] = run["id"]
        for app in batch.chunks:
            stream = self._streams.setdefault(app.run_id, {}).setdefault(app.key, _Stream())
            stream.items.extend(app.items)
            stream.nbytes += app.nbytes
            if app.producer is not None and app.next_seq is not None:
                self._seqs.setdefault(app.run_id, {})[(app.key, app.producer)] = app.next_seq
        for rec in batch.records:
            log = self._records.setdefault(rec.run_id, {}).setdefault(rec.key, [])
            log.append(StoredRecord(rec.index, rec.data, rec.idempotency_key))
        for wp in batch.waitpoints:
            self._waitpoints[(wp.run_id, wp.key)] = (wp.data, wp.expires_at)
        for run_id, key in batch.ended:
            self._streams.setdefault(run_id, {}).setdefault(key, _Stream()).ended = True
        for path in batch.dropped_streams:
            self._ds.pop(path, None)
            self._ds_items.pop(path, None)
            for pkey in [k for k in self._ds_producers if k[0] == path]:
                del self._ds_producers[pkey]
        for write in batch.streams:
            path = write.stream.path
            self._ds[path] = write.stream.copy()  # a private copy
            starts, datas = self._ds_items.setdefault(path, ([], []))
            for start, data in write.items:
                starts.append(start)
                datas.append(bytes(data))
            if write.producer is not None:
                pid, epoch, seq = write.producer
                self._ds_producers[(path, pid)] = (epoch, seq)

    def _check_gaps(self, batch: Batch) -> None:
        lengths: dict[tuple[str, str], int] = {}
        for app in batch.chunks:
            where = (app.run_id, app.key)
            if where not in lengths:
                stream = self._streams.get(app.run_id, {}).get(app.key)
                lengths[where] = len(stream.items) if stream else 0
            if app.start != lengths[where]:
                raise IndexGapError(f"chunk index gap in {app.run_id}/{app.key}: store has "
                                   f"{lengths[where]}, batch starts at {app.start}")
            lengths[where] += len(app.items)

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        run = self._runs.get(run_id)
        return orjson.loads(run) if run is not None else None

    async def find_run(self, task_id: str, idempotency_key: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return self._by_key.get((task_id, idempotency_key))

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        final = {"COMPLETED", "FAILED", "CANCELED", "CRASHED", "TIMED_OUT"}
        runs = (orjson.loads(r) for r in self._runs.values())
        return [r for r in runs if r["status"] not in final]

    def chunks_now(self, run_id: str, key: str) -> list[bytes]:
        """Every stored chunk of a stream, without a checkpoint (for tests that must look
        while nothing else runs)."""
        stream = self._streams.get(run_id, {}).get(key)
        return list(stream.items) if stream else []

    async def read_chunks(self, run_id: str, key: str, start: int, limit: int) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        stream = self._streams.get(run_id, {}).get(key)
        return stream.items[start:start + limit] if stream else []

    async def streams(self, run_id: str) -> dict[str, StreamState]:
        await trio.lowlevel.checkpoint()
        return {k: StreamState(len(s.items), s.nbytes, s.ended)
                for k, s in self._streams.get(run_id, {}).items()}

    async def producer_seqs(self, run_id: str) -> dict[tuple[str, str], int]:
        await trio.lowlevel.checkpoint()
        return dict(self._seqs.get(run_id, {}))

    async def records(self, run_id: str) -> dict[str, list[StoredRecord]]:
        await trio.lowlevel.checkpoint()
        return {k: list(v) for k, v in self._records.get(run_id, {}).items()}

    async def waitpoint(self, run_id: str, key: str, now: float) -> bytes | None:
        await trio.lowlevel.checkpoint()
        found = self._waitpoints.get((run_id, key))
        if found is None or (found[1] is not None and found[1] <= now):
            return None
        return found[0]

    async def list_runs(self, *, task: str | None, status: list[str] | None,
                        tags: list[str] | None, created_after: float | None,
                        created_before: float | None, limit: int,
                        cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        await trio.lowlevel.checkpoint()
        return page_of_runs([orjson.loads(r) for r in self._runs.values()], task=task,
                            status=status, tags=tags, created_after=created_after,
                            created_before=created_before, limit=limit, cursor=cursor)

    async def create_token(self, token: StoredToken) -> StoredToken:
        await trio.lowlevel.checkpoint()
        if token.idempotency_key is not None and token.idempotency_key in self._token_keys:
            return self._tokens[self._token_keys[token.idempotency_key]]
        self._tokens[token.id] = token
        if token.idempotency_key is not None:
            self._token_keys[token.idempotency_key] = token.id
        return token

    async def get_token(self, token_id: str) -> StoredToken | None:
        await trio.lowlevel.checkpoint()
        return self._tokens.get(token_id)

    async def complete_token(self, token_id: str, data: bytes,
                             now: float) -> tuple[StoredToken | None, bool]:
        await trio.lowlevel.checkpoint()
        token = self._tokens.get(token_id)
        if token is None or token.status != "WAITING" or token.timed_out(now):
            return token, False
        token = self._tokens[token_id] = attrs.evolve(token, status="COMPLETED",
                                                      data=bytes(data), completed_at=now)
        return token, True

    async def durable_streams(self) -> list[DurableStream]:
        await trio.lowlevel.checkpoint()
        return [attrs.evolve(s) for s in self._ds.values()]

    async def stream_items(self, path: str, start: int, end: int,
                           max_bytes: int) -> list[tuple[int, bytes]]:
        await trio.lowlevel.checkpoint()
        starts, datas = self._ds_items.get(path, ([], []))
        i = max(bisect_right(starts, start) - 1, 0)
        found: list[tuple[int, bytes]] = []
        size = 0
        while i < len(starts) and starts[i] < end and (not found or size < max_bytes):
            found.append((starts[i], datas[i]))
            size += len(datas[i])
            i += 1
        return found

    async def stream_producer(self, path: str, producer: str) -> tuple[int, int] | None:
        await trio.lowlevel.checkpoint()
        return self._ds_producers.get((path, producer))

    async def delete_finished_before(self, cutoff: float) -> int:
        await trio.lowlevel.checkpoint()
        runs = {rid: orjson.loads(raw) for rid, raw in self._runs.items()}
        doomed = [rid for rid, run in runs.items()
                  if run.get("finished_at") is not None and run["finished_at"] < cutoff]
        for rid in doomed:
            del self._runs[rid]
            self._by_key.pop((runs[rid]["task_id"], runs[rid].get("idempotency_key")), None)
            self._streams.pop(rid, None)
            self._seqs.pop(rid, None)
            self._records.pop(rid, None)
            for wkey in [k for k in self._waitpoints if k[0] == rid]:
                del self._waitpoints[wkey]
        gone = set(doomed)
        for token in list(self._tokens.values()):  # a run's tokens go with it; free ones
            ended = token.completed_at if token.status == "COMPLETED" else token.expires_at
            if token.run_id in gone or (token.run_id is None and ended is not None
                                        and ended < cutoff):
                del self._tokens[token.id]
                self._token_keys.pop(token.idempotency_key or "", None)
        return len(doomed)
