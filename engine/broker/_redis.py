"""The Redis broker: many engines on one Redis share runs, streams and inputs.

Theory of operation (keys under the store's prefix ``P``):

* **Leases.** An engine executes a run only while it holds ``P lease:{run}``, with a TTL of
  ``lease_ttl`` seconds. It takes the lease before it stores or recovers the run
  (:meth:`RedisBroker.claim`, set only if absent), renews every lease it holds each third of
  the TTL, and deletes it when the actor ends. An engine that dies (``kill -9``) stops
  renewing: its leases expire, and another engine finds those runs (stored unfinished, no
  lease: :meth:`orphans`), claims them and recovers them by the usual rules (a new attempt,
  or a durable wait resumed where it waited).
* **Fencing.** A claim counts the run's epoch up (``P fence:{run}``) and the lease holds the
  token ``ENGINE EPOCH``. Every write of the run's data carries the token
  (:meth:`RedisBroker.lease`, ``Batch.leases``), and the store's commit script refuses the
  whole batch if the run was claimed since (``LeaseLostError``): an engine that was paused
  or cut off while another took its run over writes nothing more of it. A lease that
  expired with nobody claiming it since (the epoch unchanged) still holds, and the next
  renewal takes it back.
* **Routing.** A send, an append or a cancel for a run this engine does not execute goes to
  the lease holder's inbox ``P inbox:ENGINE`` (a list; the holder waits on it with
  ``BLPOP``), and the answer comes back on a list of its own (``P reply:ID``, ``BLPOP`` on
  the asking side). Nothing polls.
* **Following.** A reader or a subscription here for a run executing elsewhere subscribes to
  ``P w:RUN``, which the store's commit script publishes on whenever it changes the run's
  streams or record; on each message the follower reads the run's stream lengths and record
  (one round trip) and wakes its readers, who read the new chunks from the store. Pub/sub
  loses messages while a connection is down, so a follower also looks every
  ``REFRESH`` seconds: a safety net, not the wake-up.
* **Queue slots.** A task queue's concurrency limit holds across engines: its slots are a
  sorted set ``P slots:NAME`` of holders with their expiry (renewed with the leases, so a
  dead engine's slots come free after the TTL). A run that finds no free slot waits for a
  release, published on ``P slots:NAME``, looking again every ``SLOT_LOOK`` seconds.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio

from ..run import OutputStream, RunActor, RunUnreachableError
from ..store import StoreError, StoreUnavailableError
from ..store._redis import RedisStore, decode_streams, load_scripts, redis_errors
from ._base import (
    BrokerStatistics, LocalBroker, NotLiveError, RemoteError, RequestHandler, RunWatch,
)

log = logging.getLogger("runwire.engine")

#: Seconds between a follower's safety-net looks (pub/sub is at most once).
REFRESH = 2.0
#: Seconds a routed request waits for the owner's answer (a cancel waits for the run's end).
ROUTE_TIMEOUT = {"cancel": 120.0}
DEFAULT_ROUTE_TIMEOUT = 30.0

#: Seconds between a queued run's looks for a free slot besides release notices.
SLOT_LOOK = 1.0

_ACQUIRE = r"""#!lua flags=no-cluster
local key, limit, holder, ttl = ARGV[1] .. 'slots:' .. ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) >= limit then return 0 end
redis.call('ZADD', key, now + ttl, holder)
return 1
"""

_SLOTS_RENEW = r"""#!lua flags=no-cluster,allow-oom
local key, ttl = ARGV[1] .. 'slots:' .. ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 4, #ARGV do redis.call('ZADD', key, 'XX', now + ttl, ARGV[i]) end
return 1
"""

_SLOT_RELEASE = r"""#!lua flags=no-cluster,allow-oom
redis.call('ZREM', ARGV[1] .. 'slots:' .. ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[1] .. 'slots:' .. ARGV[2], '1')
return 1
"""

#: The run's lease for engine ARGV[3], unless another engine holds it: its token
#: ``ENGINE EPOCH`` (the run's epoch counted up), or nil.
_CLAIM = r"""#!lua flags=no-cluster
local key = ARGV[1] .. 'lease:{' .. ARGV[2] .. '}'
if redis.call('EXISTS', key) == 1 then return false end
local token = ARGV[3] .. ' ' .. redis.call('INCR', ARGV[1] .. 'fence:{' .. ARGV[2] .. '}')
redis.call('SET', key, token, 'PX', ARGV[4])
return token
"""

#: Renew engine ARGV[2]'s leases (ARGV[4..]: run id, token pairs); the runs it lost.
_RENEW = r"""#!lua flags=no-cluster,allow-oom
local P, me, ttl = ARGV[1], ARGV[2], ARGV[3]
redis.call('SET', P .. 'engine:' .. me, '1', 'PX', ttl)
local lost = {}
for i = 4, #ARGV, 2 do
  local run, token = ARGV[i], ARGV[i+1]
  local key = P .. 'lease:{' .. run .. '}'
  local holder = redis.call('GET', key)
  if holder == token then
    redis.call('PEXPIRE', key, ttl)
  elseif holder == false and redis.call('GET', P .. 'fence:{' .. run .. '}')
      == string.match(token, ' (%d+)$') then
    redis.call('SET', key, token, 'PX', ttl)  -- expired, nobody claimed it: take it back
  else
    lost[#lost + 1] = run
  end
end
return lost
"""

_RELEASE = r"""#!lua flags=no-cluster,allow-oom
local key = ARGV[1] .. 'lease:{' .. ARGV[2] .. '}'
if redis.call('GET', key) == ARGV[3] then redis.call('DEL', key) end
return 1
"""

_ORPHANS = r"""#!lua flags=no-writes,no-cluster
local P = ARGV[1]
local found = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'unfinished')) do
  if redis.call('EXISTS', P .. 'lease:{' .. id .. '}') == 0 then found[#found + 1] = id end
end
return found
"""

_OWNER = r"""#!lua flags=no-writes,no-cluster
return redis.call('GET', ARGV[1] .. 'lease:{' .. ARGV[2] .. '}')
"""

_FOLLOW = r"""#!lua flags=no-writes,no-cluster
local P, run = ARGV[1], ARGV[2]
return {redis.call('HGETALL', P .. 'st:{' .. run .. '}'),
        redis.call('GET', P .. 'run:{' .. run .. '}') or ''}
"""


class _Follower:
    """One run executing elsewhere that readers or subscriptions here follow."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.watch = RunWatch()
        self.streams: weakref.WeakValueDictionary[str, OutputStream] = \
            weakref.WeakValueDictionary()
        self.watchers = 0
        self.final = False
        self.poked = trio.Event()

    def idle(self) -> bool:
        return self.watchers == 0 and not len(self.streams)


class RedisBroker(LocalBroker):
    """Live runs of this engine (as :class:`LocalBroker`), plus leases, routing and
    following through Redis, shared with every engine on the same store."""

    shared = True

    def __init__(self, store: RedisStore) -> None:
        super().__init__()
        self.store = store
        self.prefix = store.prefix
        self.engine_id = uuid.uuid4().hex[:16]
        self.lease_ttl = store.address.lease_ttl
        self._followers: dict[str, _Follower] = {}
        self._stream_watches: dict[str, tuple[RunWatch, list[int]]] = {}  # path: (watch, [n])
        self._held: dict[str, str] = {}  # run id -> token of the lease this engine holds
        self._slots: dict[str, RedisQueueSlots] = {}
        self._nursery: trio.Nursery | None = None
        self._handler: RequestHandler | None = None
        self._pubsub: Any = None
        self._scripts: dict[str, Any] = {}
        self._scripts_for: Any = None
        self.routed = 0  #: requests this engine sent to others (for tests)
        self.served = 0  #: requests other engines sent here

    # --- Redis ---------------------------------------------------------------------------

    async def _script(self, name: str, *args: Any) -> Any:
        client = await self.store.client()
        if self._scripts_for is not client:  # a new connection (Redis came back)
            with redis_errors(self.store.address):
                self._scripts = await load_scripts(client, {
                    "claim": _CLAIM, "renew": _RENEW, "release": _RELEASE,
                    "orphans": _ORPHANS, "owner": _OWNER, "follow": _FOLLOW,
                    "acquire": _ACQUIRE, "slots_renew": _SLOTS_RENEW,
                    "slot_release": _SLOT_RELEASE})
            self._scripts_for = client
        with redis_errors(self.store.address):
            return await self._scripts[name](args=[self.prefix, *args])

    # --- lifetime ------------------------------------------------------------------------

    async def run(self, handler: RequestHandler, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew leases, serve routed requests and carry wake-ups until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._handler = handler
                await self._renew()
                nursery.start_soon(self._heartbeat_loop)
                nursery.start_soon(self._inbox_loop, handler)
                await nursery.start(self._pubsub_loop)
                task_status.started()
        finally:
            self._nursery = None
            # what is still held goes to the other engines now, not after the TTL
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                for run_id in sorted(self._held):
                    await self.release(run_id)

    def queue_slots(self, name: str, limit: int) -> RedisQueueSlots:
        slots = self._slots.get(name)
        if slots is None:
            slots = self._slots[name] = RedisQueueSlots(self, name, limit)
        return slots

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(live_runs=len(self._actors), queues={
            name: (slots.limit, len(slots.held)) for name, slots in self._slots.items()})

    async def _renew(self) -> None:
        ttl = int(self.lease_ttl * 1000)
        for name, slots in list(self._slots.items()):
            if slots.held:
                await self._script("slots_renew", name, ttl, *slots.held)
        sent = dict(self._held)  # run -> token, as renewed
        held = [part for pair in sorted(sent.items()) for part in pair]
        lost = await self._script("renew", self.engine_id, int(self.lease_ttl * 1000), *held)
        for raw in lost or ():
            run_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if self._held.get(run_id) != sent.get(run_id):
                continue  # released and claimed again meanwhile: the new claim is not lost
            log.error("run %s: its lease was taken by another engine while this one could "
                      "not renew it (Redis away longer than the lease); it is abandoned "
                      "here, the other engine goes on with it", run_id)
            self._held.pop(run_id, None)
            if self._handler is not None:
                await self._handler({"op": "abandon", "run_id": run_id})

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.lease_ttl / 3)
            try:
                await self._renew()
            except StoreError as exc:
                log.warning("could not renew this engine's leases: %s", exc)

    async def _inbox_loop(self, handler: RequestHandler) -> None:
        assert self._nursery is not None
        inbox = f"{self.prefix}inbox:{self.engine_id}"
        while True:
            try:
                client = await self.store.client()
                with redis_errors(self.store.address):
                    got = await client.blpop([inbox], timeout=1)
            except StoreError as exc:
                log.warning("engine inbox: %s; trying again", exc)
                await trio.sleep(1)
                continue
            if got:
                self._nursery.start_soon(self._answer, handler, orjson.loads(got[1]))

    async def _answer(self, handler: RequestHandler, request: dict[str, Any]) -> None:
        self.served += 1
        try:
            reply: dict[str, Any] = {"ok": await handler(request)}
        except Exception as exc:
            reply = {"error": [type(exc).__name__, str(exc)]}
        key = f"{self.prefix}reply:{request['reply']}"
        try:
            client = await self.store.client()
            with redis_errors(self.store.address):
                await client.rpush(key, [orjson.dumps(reply)])
                await client.expire(key, 120)
        except StoreError as exc:
            log.warning("could not answer a routed request: %s", exc)

    async def _pubsub_loop(self, *, task_status: trio.TaskStatus[None]) -> None:
        started = False
        while True:
            try:
                client = await self.store.client()
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    # a channel of its own first: coredis ends the iteration of a pubsub
                    # with no subscription, and followers come and go
                    await pubsub.subscribe(f"{self.prefix}engine:{self.engine_id}")
                    for slots in list(self._slots.values()):
                        await pubsub.subscribe(slots.channel)
                    self._pubsub = pubsub
                    for run_id in list(self._followers):
                        await pubsub.subscribe(self._channel(run_id))
                    for path in list(self._stream_watches):
                        await pubsub.subscribe(self._stream_channel(path))
                    if not started:
                        task_status.started()
                        started = True
                    async for message in pubsub:
                        channel = message["channel"]
                        tail = (channel.decode() if isinstance(channel, bytes)
                                else str(channel))[len(self.prefix):]
                        if tail.startswith("slots:"):
                            freed = self._slots.get(tail[6:])
                            if freed is not None:
                                freed.freed()
                            continue
                        if tail.startswith("dsw:"):
                            watched = self._stream_watches.get(tail[4:])
                            if watched is not None:
                                watched[0].poke()
                            continue
                        follower = self._followers.get(tail[2:])
                        if follower is not None:
                            data = message["data"]
                            if isinstance(data, bytes) and data.startswith(b"{"):
                                follower.watch.poke(orjson.loads(data))
                            follower.poked.set()
            except Exception as exc:  # Redis away: followers fall back on their looks
                log.warning("engine pub/sub connection: %r; reconnecting", exc)
            finally:
                self._pubsub = None
            if not started:
                task_status.started()
                started = True
            for follower in self._followers.values():
                follower.poked.set()  # what was missed meanwhile
            for watch, _ in self._stream_watches.values():
                watch.poke()
            await trio.sleep(0.5)

    def _channel(self, run_id: str) -> str:
        return f"{self.prefix}w:{run_id}"

    def _stream_channel(self, path: str) -> str:
        return f"{self.prefix}dsw:{path}"

    @asynccontextmanager
    async def watch_durable_stream(self, path: str) -> AsyncIterator[RunWatch]:
        """Poked on each commit (of any engine) that writes or removes the durable stream:
        the store's commit script publishes on ``P dsw:PATH``. Subscribed before this
        yields, so a reader that reads the stream after entering misses nothing; pub/sub
        loses messages while the connection is down, so a reconnect pokes every watch."""
        watched = self._stream_watches.get(path)
        if watched is None:
            watched = self._stream_watches[path] = (RunWatch(), [0])
            if self._pubsub is not None:
                try:
                    await self._pubsub.subscribe(self._stream_channel(path))
                except Exception as exc:  # the reader's safety-net looks still see changes
                    log.warning("could not subscribe to durable stream %r: %r", path, exc)
        watched[1][0] += 1
        try:
            yield watched[0]
        finally:
            watched[1][0] -= 1
            if watched[1][0] == 0 and self._stream_watches.get(path) is watched:
                del self._stream_watches[path]
                if self._pubsub is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        try:
                            await self._pubsub.unsubscribe(self._stream_channel(path))
                            if path in self._stream_watches:  # a new reader came meanwhile
                                await self._pubsub.subscribe(self._stream_channel(path))
                        except Exception:
                            pass

    async def _listen_for_slots(self, slots: RedisQueueSlots) -> None:
        if self._pubsub is not None:
            try:
                await self._pubsub.subscribe(slots.channel)
            except Exception as exc:  # its looks still find free slots
                log.warning("could not subscribe to queue %s: %r", slots.name, exc)

    # --- leases --------------------------------------------------------------------------

    async def claim(self, run_id: str) -> bool:
        token = await self._script("claim", run_id, self.engine_id, int(self.lease_ttl * 1000))
        if not token:
            return False
        self._held[run_id] = token.decode() if isinstance(token, bytes) else str(token)
        return True

    def lease(self, run_id: str) -> str | None:
        return self._held.get(run_id)

    def detach(self, actor: RunActor) -> None:
        mine = self._actors.get(actor.id) is actor
        super().detach(actor)
        if mine and self._nursery is not None:
            self._nursery.start_soon(self.release, actor.id)

    async def release(self, run_id: str) -> None:
        if run_id in self._actors:  # a newer actor of the run started here meanwhile
            return
        token = self._held.pop(run_id, None)
        if token is None:  # not held (lost to another engine, or released already)
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._script("release", run_id, token)
        except StoreError as exc:  # it expires by itself
            log.warning("could not release the lease of run %s: %s", run_id, exc)

    async def orphans(self) -> list[str]:
        found = await self._script("orphans")
        return sorted(r.decode() if isinstance(r, bytes) else str(r) for r in found or ())

    async def owner_engine(self, run_id: str) -> str | None:
        """The engine id holding the run's lease, if any."""
        raw = await self._script("owner", run_id)
        token = raw.decode() if isinstance(raw, bytes) else (raw or None)
        return token.partition(" ")[0] if token else None

    # --- routing -------------------------------------------------------------------------

    async def route(self, run_id: str, request: dict[str, Any]) -> Any:
        """Send ``request`` to the lease holder's inbox and wait for its answer. If the
        holder changes meanwhile (it died: its lease expired and maybe another engine took
        the run), the request goes to the new holder: requests are idempotent (sends carry
        an idempotency key, appends a producer sequence number)."""
        timeout = ROUTE_TIMEOUT.get(str(request.get("op")), DEFAULT_ROUTE_TIMEOUT)
        deadline = trio.current_time() + timeout
        while True:
            engine = await self.owner_engine(run_id)
            if engine is None:
                raise NotLiveError(run_id)
            got = await self._ask(engine, run_id, request, deadline)
            if got is not None:
                reply = orjson.loads(got)
                if "error" in reply:
                    if reply["error"][0] == NotLiveError.__name__:  # handed back meanwhile
                        raise NotLiveError(run_id)
                    raise RemoteError(*reply["error"])
                return reply["ok"]
            if trio.current_time() >= deadline:
                raise RunUnreachableError(f"the engine executing run {run_id} did not "
                                          f"answer within {timeout:g} s; try again")

    async def _ask(self, engine: str, run_id: str, request: dict[str, Any],
                   deadline: float) -> bytes | None:
        """The answer of ``engine``; ``None`` if it lost the run first (or time ran out)."""
        reply_id = uuid.uuid4().hex
        message = orjson.dumps({**request, "run_id": run_id, "reply": reply_id})
        client = await self.store.client()
        inbox = f"{self.prefix}inbox:{engine}"
        self.routed += 1
        with redis_errors(self.store.address):
            await client.rpush(inbox, [message])
            await client.expire(inbox, int(self.lease_ttl * 3) + 60)  # nobody reads: gone
        while trio.current_time() < deadline:
            wait = max(0.1, min(self.lease_ttl / 2, deadline - trio.current_time()))
            with redis_errors(self.store.address):
                got = await client.blpop([f"{self.prefix}reply:{reply_id}"], timeout=wait)
            if got is not None:
                return bytes(got[1])
            if await self.owner_engine(run_id) != engine:
                return None
        return None

    # --- following -----------------------------------------------------------------------

    async def follow(self, run_id: str, key: str, stream: OutputStream) -> OutputStream:
        follower = await self._follower(run_id)
        mirror = follower.streams.get(key)
        if mirror is None:
            follower.streams[key] = mirror = stream
        follower.poked.set()  # look once now: subscribed before this look, nothing is missed
        return mirror

    @asynccontextmanager
    async def watch(self, run_id: str) -> AsyncIterator[RunWatch]:
        follower = await self._follower(run_id)
        follower.watchers += 1
        try:
            follower.poked.set()
            yield follower.watch
        finally:
            follower.watchers -= 1

    async def _follower(self, run_id: str) -> _Follower:
        follower = self._followers.get(run_id)
        if follower is None:
            if self._nursery is None:
                raise RuntimeError("the broker is not running")
            follower = self._followers[run_id] = _Follower(run_id)
            if self._pubsub is not None:
                try:
                    await self._pubsub.subscribe(self._channel(run_id))
                except Exception as exc:  # the follower's looks still see changes
                    log.warning("could not subscribe to run %s: %r", run_id, exc)
            self._nursery.start_soon(self._follow_loop, follower)
        return follower

    async def _follow_loop(self, follower: _Follower) -> None:
        try:
            while not follower.final:
                with trio.move_on_after(REFRESH):
                    await follower.poked.wait()
                follower.poked = trio.Event()
                try:
                    await self._look(follower)
                except StoreError as exc:
                    log.warning("following run %s: %s", follower.run_id, exc)
                    continue
                if follower.idle():
                    break
        finally:
            if self._followers.get(follower.run_id) is follower:
                del self._followers[follower.run_id]
            if self._pubsub is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self._pubsub.unsubscribe(self._channel(follower.run_id))
                    except Exception:
                        pass

    async def _look(self, follower: _Follower) -> None:
        flat, raw_run = await self._script("follow", follower.run_id)
        states = decode_streams(dict(zip(flat[::2], flat[1::2])))
        run = orjson.loads(raw_run) if raw_run else None
        final = run is None or run.get("status") in {
            "COMPLETED", "FAILED", "CANCELED", "CRASHED", "TIMED_OUT"}
        for key, mirror in list(follower.streams.items()):
            state = states.get(key)
            mirror.follow(state.length if state else 0, state.nbytes if state else 0,
                          final or bool(state and state.ended))
        follower.final = final
        follower.watch.poke()



class RedisQueueSlots:
    """A task queue's concurrency slots, shared by every engine on the Redis store (a
    :class:`~runwire.engine.run.QueueSlots`)."""

    def __init__(self, broker: RedisBroker, name: str, limit: int) -> None:
        self.broker = broker
        self.name = name
        self.limit = limit
        self.channel = f"{broker.prefix}slots:{name}"
        self.held: list[str] = []
        self._freed = trio.Event()
        self._listening = False

    def acquire_nowait(self) -> None:
        """Always ``WouldBlock``: a slot is taken in Redis, which needs a round trip."""
        raise trio.WouldBlock

    async def acquire(self) -> None:
        if not self._listening:
            self._listening = True
            await self.broker._listen_for_slots(self)
        holder = f"{self.broker.engine_id}:{uuid.uuid4().hex[:12]}"
        while True:
            self._freed = trio.Event()
            try:
                got = await self.broker._script("acquire", self.name, self.limit, holder,
                                                int(self.broker.lease_ttl * 1000))
            except StoreUnavailableError as exc:  # Redis away a moment: the run waits on
                log.warning("queue %s: could not look for a slot (%s); trying again",
                            self.name, exc)
                got = False
            if got:
                self.held.append(holder)
                return
            with trio.move_on_after(SLOT_LOOK):
                await self._freed.wait()

    def release(self) -> None:
        if not self.held:
            return
        holder = self.held.pop()
        nursery = self.broker._nursery
        if nursery is not None:  # else it expires with the TTL
            nursery.start_soon(self._release, holder)

    async def _release(self, holder: str) -> None:
        try:
            await self.broker._script("slot_release", self.name, holder)
        except StoreError as exc:
            log.warning("could not release a slot of queue %s: %s", self.name, exc)

    def freed(self) -> None:
        self._freed.set()
