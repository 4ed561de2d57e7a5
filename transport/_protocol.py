"""Sans-IO protocol object: messages in, frames out; frames in, messages out. No I/O, no trio.

Theory of operation: each side of a connection owns one :class:`Protocol`. It knows its role
(``CLIENT`` or ``ENGINE``) and the connection's state, and it moves between states only along
the edges of ``TRANSITIONS`` (the same table for both roles, keyed by who sends what):

    ENGINE:  AWAIT_HELLO --recv hello--> HELLO_RECEIVED --send welcome--> OPEN
                         \\--send error (4401)--> CLOSED
    CLIENT:  START --send hello--> HELLO_SENT --recv welcome--> OPEN
                                              \\--recv error--> CLOSED

In ``OPEN`` any frame of the right direction may pass, except a second ``hello`` or
``welcome`` (an edge to ``None`` in the table means "refused"). A message that is not a
valid frame, is of the wrong direction, or comes in the wrong state raises
:class:`RemoteProtocolError` with the error code to answer with; before ``hello``, anything
but a ``hello`` (garbage, any other frame of either direction) is ``unauthorized`` with
close code 4401. The state is left unchanged, so the connection keeps working after an
``error`` frame. Misusing the object from this side raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import enum

from ._close import CLOSE_BAD_PROTOCOL, CLOSE_UNAUTHORIZED
from ._codec import decode, encode
from ._errors import LocalProtocolError, RemoteProtocolError
from ._frames import (
    CLIENT_FRAMES, ENGINE_FRAMES, PROTOCOL_VERSION, Error, Frame, Hello, Welcome,
)



class Role(enum.Enum):
    CLIENT = "client"
    ENGINE = "engine"


class State(enum.Enum):
    START = "start"
    AWAIT_HELLO = "await_hello"
    HELLO_SENT = "hello_sent"
    HELLO_RECEIVED = "hello_received"
    OPEN = "open"
    CLOSED = "closed"


# (state, "send" | "recv", frame class or None for any other frame) -> next state,
# or None: that frame is refused in that state
TRANSITIONS: dict[tuple[State, str, type[Frame] | None], State | None] = {
    (State.START, "send", Hello): State.HELLO_SENT,
    (State.HELLO_SENT, "recv", Welcome): State.OPEN,
    (State.HELLO_SENT, "recv", Error): State.CLOSED,
    (State.AWAIT_HELLO, "recv", Hello): State.HELLO_RECEIVED,
    (State.AWAIT_HELLO, "send", Error): State.CLOSED,
    (State.HELLO_RECEIVED, "send", Welcome): State.OPEN,
    (State.HELLO_RECEIVED, "send", Error): State.CLOSED,
    (State.OPEN, "send", Hello): None,
    (State.OPEN, "recv", Hello): None,
    (State.OPEN, "send", Welcome): None,
    (State.OPEN, "recv", Welcome): None,
    (State.OPEN, "send", None): State.OPEN,
    (State.OPEN, "recv", None): State.OPEN,
}

_OUTGOING = {Role.CLIENT: CLIENT_FRAMES, Role.ENGINE: ENGINE_FRAMES}
_INITIAL = {Role.CLIENT: State.START, Role.ENGINE: State.AWAIT_HELLO}


class Protocol:
    """One side of a runwire connection, without I/O.

    Args:
        role: which side this object speaks for.
    """

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = _INITIAL[role]

    def _next(self, direction: str, cls: type[Frame]) -> State | None:
        key = (self.state, direction, cls)
        if key in TRANSITIONS:
            return TRANSITIONS[key]
        return TRANSITIONS.get((self.state, direction, None))

    def send(self, frame: Frame) -> bytes:
        """Encode a frame for sending and advance the state.

        Raises:
            LocalProtocolError: this side may not send that frame now.
        """
        if not isinstance(frame, _OUTGOING[self.role]):
            raise LocalProtocolError(f"a {self.role.value} does not send {frame.type!r} frames")
        nxt = self._next("send", type(frame))
        if nxt is None:
            raise LocalProtocolError(f"cannot send {frame.type!r} in state {self.state.value}")
        data = encode(frame)
        self.state = nxt
        return data

    def receive(self, data: bytes | str) -> Frame:
        """Decode one received message and advance the state.

        Raises:
            RemoteProtocolError: the message is not a frame this side may receive now.
        """
        if self.state is State.CLOSED:
            raise LocalProtocolError("connection is closed")
        try:
            frame = decode(data, check_depth=self.role is Role.ENGINE)  # see decode()
        except RemoteProtocolError as exc:
            if self.state is State.AWAIT_HELLO:
                exc.code, exc.close_code = "unauthorized", CLOSE_UNAUTHORIZED
            raise
        rid = getattr(frame, "id", None)
        if self.state is State.AWAIT_HELLO and not isinstance(frame, Hello):
            raise RemoteProtocolError("the first frame must be 'hello'", code="unauthorized",
                                      re=rid, close_code=CLOSE_UNAUTHORIZED)
        incoming = _OUTGOING[Role.ENGINE if self.role is Role.CLIENT else Role.CLIENT]
        if not isinstance(frame, incoming):
            raise RemoteProtocolError(f"{frame.type!r} frames are not sent to the "
                                      f"{self.role.value}", re=rid)
        nxt = self._next("recv", type(frame))
        if nxt is None:
            raise RemoteProtocolError(f"unexpected {frame.type!r} in state {self.state.value}",
                                      re=rid)
        if isinstance(frame, (Hello, Welcome)) and frame.protocol != PROTOCOL_VERSION:
            # checked after the state, so only a handshake frame can get here
            raise RemoteProtocolError(f"unsupported protocol version {frame.protocol} "
                                      f"(this side speaks {PROTOCOL_VERSION})",
                                      code="bad_frame", close_code=CLOSE_BAD_PROTOCOL)
        self.state = nxt
        return frame

    def close(self) -> None:
        """Mark the connection closed; further sends and receives are local errors."""
        self.state = State.CLOSED


__all__ = ["Protocol", "Role", "State", "TRANSITIONS"]
