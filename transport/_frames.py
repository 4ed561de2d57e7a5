"""Every message of wire protocol v1, as frozen attrs classes.

Theory of operation: a frame is one JSON object with a ``"type"``. Each class below is one
type; ``FRAME_TYPES`` maps the wire name to its class and is the tagged union the codec
uses. Requests from a client carry an integer ``id``; everything the engine sends about a
request carries ``re`` with that id. Field names are the wire names, except ``from_``
(``"from"`` on the wire). ``docs/protocol.md`` is the prose version of this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NewType

import attrs

# The codec registers pass-through hooks for these three names, so at run time they must be
# distinct objects cattrs can dispatch on (NewTypes). To a type checker they are plain
# aliases: a field takes any JSON value (or an ``orjson.Fragment``, or encoded ``bytes`` in
# a ``chunks`` frame built by the engine) without a wrapper call.
if TYPE_CHECKING:
    from typing import TypeAlias

    #: Any JSON value (object, array, string, number, bool, null). The codec passes it
    #: through untouched: it was produced by, or will be given to, orjson.
    Json: TypeAlias = Any
    #: A JSON array of any values.
    JsonList: TypeAlias = list[Any]
    #: A JSON object of any values.
    JsonObject: TypeAlias = dict[str, Any]
else:
    Json = NewType("Json", object)
    JsonList = NewType("JsonList", list)
    JsonObject = NewType("JsonObject", dict)

PROTOCOL_VERSION = 1


@attrs.frozen
class Frame:
    """Base of every frame; ``type`` is the wire tag."""

    type: ClassVar[str] = ""


# --- client -> engine ----------------------------------------------------------------------


@attrs.frozen
class Hello(Frame):
    """First frame of every connection: protocol version and credential."""

    type: ClassVar[str] = "hello"
    protocol: int
    token: str


@attrs.frozen
class Read(Frame):
    """Read output stream ``stream`` of ``run`` from chunk index ``from_``."""

    type: ClassVar[str] = "read"
    id: int
    run: str
    stream: str = "default"
    from_: int = 0
    timeout_s: float | None = 60.0


@attrs.frozen
class Append(Frame):
    """Append ``items`` to an output stream as producer ``producer``.

    ``seq`` numbers ``items[0]`` in the producer's own sequence (from 0); the engine keeps
    the next expected number per producer and stores only what it has not stored before.
    """

    type: ClassVar[str] = "append"
    id: int
    run: str
    stream: str
    producer: str
    seq: int
    items: JsonList


@attrs.frozen
class Send(Frame):
    """Send one record to input stream ``stream`` of ``run``; ``key`` makes it idempotent."""

    type: ClassVar[str] = "send"
    id: int
    run: str
    stream: str
    data: Json
    key: str | None = None


@attrs.frozen
class Trigger(Frame):
    """Start a run of ``task`` with ``payload``."""

    type: ClassVar[str] = "trigger"
    id: int
    task: str
    payload: Json = None
    options: JsonObject = attrs.field(factory=dict)


@attrs.frozen
class Subscribe(Frame):
    """Follow a run: a ``run`` frame on every change, then ``end`` once it is finished."""

    type: ClassVar[str] = "subscribe"
    id: int
    run: str


@attrs.frozen
class Retrieve(Frame):
    """Ask for a run's current record once."""

    type: ClassVar[str] = "retrieve"
    id: int
    run: str


@attrs.frozen
class CancelRun(Frame):
    """Cancel a run (status ``CANCELED``)."""

    type: ClassVar[str] = "cancel_run"
    id: int
    run: str


@attrs.frozen
class Cancel(Frame):
    """Stop request ``id`` of this connection (a read or a subscription)."""

    type: ClassVar[str] = "cancel"
    id: int


@attrs.frozen
class CreateToken(Frame):
    """Ask for a public access token carrying ``scopes`` for ``expires_in`` seconds.

    Only a connection greeted with the engine's API key may ask; the engine signs the token,
    so clients never need to know how tokens are made.
    """

    type: ClassVar[str] = "create_token"
    id: int
    scopes: list[str]
    expires_in: float = 900.0


@attrs.frozen
class ListRuns(Frame):
    """A page of runs, newest first: every filter given must hold (``tags``: all of them).

    ``created_after``/``created_before`` are epoch seconds; ``cursor`` is the previous
    page's. Answered with ``runs``.
    """

    type: ClassVar[str] = "list_runs"
    id: int
    task: str | None = None
    status: list[str] = attrs.field(factory=list)
    tags: list[str] = attrs.field(factory=list)
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 20
    cursor: str | None = None


@attrs.frozen
class CreateWaitpoint(Frame):
    """Make a waitpoint token (API key only); answered with ``waitpoint``, whose object
    carries a ``public_access_token`` that may complete it.

    ``timeout_s`` (null: none) is how long it may wait; an ``idempotency_key`` already used
    answers the token made with it.
    """

    type: ClassVar[str] = "create_waitpoint"
    id: int
    timeout_s: float | None = None
    idempotency_key: str | None = None
    tags: list[str] = attrs.field(factory=list)


@attrs.frozen
class CompleteWaitpoint(Frame):
    """Complete waitpoint token ``waitpoint`` with ``data``; the first completion wins.

    Answered with ``waitpoint`` (``completed``: whether this request completed it).
    """

    type: ClassVar[str] = "complete_waitpoint"
    id: int
    waitpoint: str
    data: Json = None


@attrs.frozen
class RetrieveWaitpoint(Frame):
    """Ask for a waitpoint token's current state; answered with ``waitpoint``."""

    type: ClassVar[str] = "retrieve_waitpoint"
    id: int
    waitpoint: str


# --- engine -> client ----------------------------------------------------------------------


@attrs.frozen
class Welcome(Frame):
    """Answer to ``hello``: the connection is open."""

    type: ClassVar[str] = "welcome"
    protocol: int
    engine: str = ""
    max_message: int = 0


@attrs.frozen
class Chunks(Frame):
    """Chunks ``start``, ``start + 1``, ... of a stream, for read request ``re``.

    The engine may build it with ``items`` as a list of already-encoded JSON ``bytes``; the
    codec then joins them into the array unchanged. Decoded frames always hold JSON values.
    """

    type: ClassVar[str] = "chunks"
    re: int
    stream: str
    start: int
    items: JsonList


@attrs.frozen
class End(Frame):
    """Request ``re`` is over; ``next`` is the first index not delivered (reads only)."""

    type: ClassVar[str] = "end"
    re: int
    reason: str
    next: int | None = None


@attrs.frozen
class Ack(Frame):
    """Request ``re`` succeeded: ``index`` of a sent record, ``next_seq`` after an append."""

    type: ClassVar[str] = "ack"
    re: int
    index: int | None = None
    next_seq: int | None = None


@attrs.frozen
class Triggered(Frame):
    """A run was started; ``token`` is a public access token scoped to it."""

    type: ClassVar[str] = "triggered"
    re: int
    run: str
    token: str


@attrs.frozen
class RunInfo(Frame):
    """A run's record (see ``docs/protocol.md`` for its fields)."""

    type: ClassVar[str] = "run"
    re: int
    run: JsonObject


@attrs.frozen
class Token(Frame):
    """Answer to ``create_token``: the signed token and when it expires (epoch seconds)."""

    type: ClassVar[str] = "token"
    re: int
    token: str
    expires_at: float | None = None


@attrs.frozen
class RunList(Frame):
    """Answer to ``list_runs``: run objects, and the ``cursor`` of the next page (null: the
    last page)."""

    type: ClassVar[str] = "runs"
    re: int
    runs: JsonList
    cursor: str | None = None


@attrs.frozen
class WaitpointInfo(Frame):
    """A waitpoint token (see ``docs/protocol.md``); ``completed`` answers
    ``complete_waitpoint``: whether that request completed it (false: it was already)."""

    type: ClassVar[str] = "waitpoint"
    re: int
    waitpoint: JsonObject
    completed: bool | None = None


@attrs.frozen
class Error(Frame):
    """Request ``re`` failed (``re`` is null for a frame that had no usable id)."""

    type: ClassVar[str] = "error"
    re: int | None
    code: str
    message: str


CLIENT_FRAMES: tuple[type[Frame], ...] = (
    Hello, Read, Append, Send, Trigger, Subscribe, Retrieve, CancelRun, Cancel, CreateToken,
    ListRuns, CreateWaitpoint, CompleteWaitpoint, RetrieveWaitpoint,
)
ENGINE_FRAMES: tuple[type[Frame], ...] = (
    Welcome, Chunks, End, Ack, Triggered, RunInfo, Token, RunList, WaitpointInfo, Error,
)
FRAME_TYPES: dict[str, type[Frame]] = {cls.type: cls for cls in CLIENT_FRAMES + ENGINE_FRAMES}


def request_id(raw: Any) -> int | None:
    """The ``id`` of a raw decoded message if it is usable, so errors can point back to it."""
    if isinstance(raw, dict):
        rid = raw.get("id")
        if type(rid) is int:
            return rid
    return None
