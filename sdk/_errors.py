"""The SDK's exceptions: one base, one class per wire error code, plus timeouts.

Every error the engine reports travels as an ``error`` frame with a ``code``; the SDK raises the
class registered for that code (:func:`error_from_code`), carrying the engine's message. A task's
own failure surfaces as :class:`TaskRunError` with the remote exception's type name and message.
"""

from __future__ import annotations


class RunwireError(Exception):
    """Base of every error runwire raises to users. ``code`` is the wire error code."""

    code = "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class UnauthorizedError(RunwireError):
    """The credential is missing, malformed, expired or wrong."""

    code = "unauthorized"


class ForbiddenError(RunwireError):
    """The credential is valid but does not allow this request."""

    code = "forbidden"


class NotFoundError(RunwireError, LookupError):
    """No such run (or it expired)."""

    code = "not_found"


class RunFinishedError(RunwireError):
    """The run has finished; it takes no more input or output."""

    code = "run_finished"


class PayloadTooLargeError(RunwireError):
    """A record or chunk is larger than the engine accepts."""

    code = "payload_too_large"


class StreamTooLargeError(RunwireError):
    """The stream reached its size limit; earlier chunks stay readable."""

    code = "stream_too_large"


class BadFrameError(RunwireError):
    """The engine could not understand a frame (a client bug)."""

    code = "bad_frame"


class UnknownTaskError(RunwireError, LookupError):
    """No task is registered under that id."""

    code = "unknown_task"


class InvalidPayloadError(RunwireError, ValueError):
    """The payload does not match the task's schema (or is not JSON)."""

    code = "invalid_payload"


class RateLimitedError(RunwireError):
    """Too many requests for this credential; try again later."""

    code = "rate_limited"


class InternalError(RunwireError):
    """The engine failed while handling the request."""

    code = "internal"


class StreamTimeoutError(RunwireError, TimeoutError):
    """No chunk arrived within ``timeout_in_seconds`` while reading a stream."""

    code = "timeout"


class InputStreamTimeoutError(RunwireError, TimeoutError):
    """No record arrived on an input stream before the timeout."""

    code = "timeout"


class WaitpointTimeoutError(RunwireError, TimeoutError):
    """A waitpoint token timed out: ``for_token`` gives ``ok=False`` with it, and completing
    the token raises it."""

    code = "waitpoint_timed_out"


class TeeOverflowError(RunwireError):
    """A pipe's ``.stream`` consumer fell more than ``TEE_BUFFER`` chunks behind."""

    code = "tee_overflow"


class TaskRunError(RunwireError):
    """A run failed; ``remote_type`` is the name of the exception the task raised."""

    code = "task_failed"

    def __init__(self, message: str = "", *, remote_type: str = "Error", run_id: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.run_id = run_id

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.message}"


class OutsideRunError(RunwireError, RuntimeError):
    """A call that needs a run (or a connected client) was made outside of one."""

    code = "internal"


class AsyncioInTaskError(RunwireError, RuntimeError):
    """A task ran asyncio-only code: tasks run on trio, where asyncio has no event loop.

    The fix: use anyio (``anyio.sleep``, httpx ...), which runs on trio, or run the asyncio
    code through ``await runwire.run_asyncio(fn, *args)``.
    """

    code = "internal"


_BY_CODE = {
    cls.code: cls
    for cls in (UnauthorizedError, ForbiddenError, NotFoundError, RunFinishedError,
                PayloadTooLargeError, StreamTooLargeError, BadFrameError, UnknownTaskError,
                InvalidPayloadError, RateLimitedError, InternalError, WaitpointTimeoutError)
}


def error_from_code(code: str, message: str) -> RunwireError:
    """The exception for a wire error code (unknown codes become a plain RunwireError)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = RunwireError(message)
        err.code = code
        return err
    return cls(message)
