"""The transport's exceptions: one base, local vs remote protocol errors, closed vs broken."""

from __future__ import annotations


class TransportError(Exception):
    """Base of every error the transport raises."""


class LocalProtocolError(TransportError):
    """This side misused the protocol (for example, sent a request before ``hello``)."""


class RemoteProtocolError(TransportError):
    """The peer sent something that is not a valid frame in the current state.

    Attributes:
        code: the wire error code to answer with (``bad_frame``, ``unauthorized``, ...).
        re: the request id the bad message carried, if it had a usable one.
        close_code: a websocket close code to close with, or ``None`` to keep the
            connection open and just answer with an ``error`` frame.
    """

    def __init__(self, message: str, *, code: str = "bad_frame", re: int | None = None,
                 close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.re = re
        self.close_code = close_code


class ConnectionClosed(TransportError):
    """The connection was closed by this side; using it again is a bug."""


class ConnectionBroken(TransportError):
    """The peer went away or the link broke; ``__cause__`` says how. ``code`` is the close code."""

    def __init__(self, message: str, *, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
