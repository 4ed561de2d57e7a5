"""Run status as a state machine: the table of allowed transitions.

Theory of operation: a run is born ``QUEUED``. It becomes ``EXECUTING`` when its queue gives it
a slot, ``WAITING`` while it is suspended on ``wait()`` (slot given back), ``QUEUED`` again when
a suspended run or a retried attempt waits for a slot, and ends in one of the five final
statuses. Nothing leaves a final status. :func:`check_transition` is the only gate; the actor
calls it for every change, so an impossible change is a bug that fails loudly.
"""

from __future__ import annotations

from runwire import RunStatus

Q, X, W = RunStatus.QUEUED, RunStatus.EXECUTING, RunStatus.WAITING
DONE, FAILED, CANCELED = RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED
CRASHED, TIMED_OUT = RunStatus.CRASHED, RunStatus.TIMED_OUT

FINAL = frozenset({DONE, FAILED, CANCELED, CRASHED, TIMED_OUT})

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    Q: frozenset({X, CANCELED, CRASHED, TIMED_OUT}),
    X: frozenset({W, Q, DONE, FAILED, CANCELED, CRASHED, TIMED_OUT}),
    W: frozenset({X, Q, CANCELED, CRASHED, TIMED_OUT, FAILED}),
    DONE: frozenset(),
    FAILED: frozenset(),
    CANCELED: frozenset(),
    CRASHED: frozenset(),
    TIMED_OUT: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A status change that the table does not allow (an engine bug)."""


def check_transition(old: RunStatus, new: RunStatus) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"run status cannot go from {old.value} to {new.value}")
