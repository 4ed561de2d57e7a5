"""A run's durable-execution journal: what makes a wait survive a restart.

Theory of operation (the model of DBOS steps, Inngest's ``step.run`` and Temporal's replay,
cut down to what runwire needs). A task function is ordinary code, so after a restart the
engine cannot continue it from the middle: it runs it again from the top and *replays* it.
For the replay to reach the same place without doing anything twice, every durable call
leaves an entry in the run's journal, kept in the store beside the run (as waitpoints, under
keys starting with ``~`` that no ``wait(idempotency_key=...)`` can make):

* ``~A:step:NAME#I``: the result of the I-th ``step(NAME, ...)`` of attempt A, and how many
  chunks it wrote to each of the run's own streams;
* ``~A:trigger:TASK#I`` and ``~A:waitpoint:token#I``: like a step, the ids of the children
  a ``trigger``/``trigger_and_wait`` made, and the token a ``wait.create_token`` made;
* ``~A:wait:KEY#I`` (input ``wait()`` on stream KEY), ``~A:sleep:#I`` (``wait.for_``),
  ``~A:token:ID#I`` (``wait.for_token``) and ``~A:children:TASK#I`` (the wait of a
  ``trigger_and_wait`` for its children):
  first ``{"deadline": ...}`` (*pending*: the run is suspended in it; the deadline is
  absolute, wall-clock seconds), then ``{"value": ...}`` or ``{"timed_out": true}``;
* ``~A:resume``: where attempt A can be resumed from: the pending wait it is suspended in
  (or ``null``), whether the engine handed the run back on a graceful stop, how many chunks
  the run had written to each of its own streams, and from which index each input stream's
  records had not been consumed yet.

A replay (a run resumed by recovery) reads the journal at each durable call: a stored step
returns its result without running; a completed wait returns its record; the pending wait
is where replay ends, and the run waits on, until the same deadline. Chunks the run's own
producers put while replaying are counted per stream and dropped while the count is below
what was stored before the stop, so the stream holds them once. The first durable call with
no stored entry also ends the replay (from there on the run executes for real). A new
attempt (after a failure, or a crash while executing) starts a fresh journal: entries are
per attempt, so its retries do not see the first attempt's steps.
"""

from __future__ import annotations

from typing import Any

#: Journal keys start with this; a ``wait(idempotency_key=...)`` key never does (it starts
#: with the input stream's key, which is checked to be a plain name).
PREFIX = "~"


def resume_key(attempt: int) -> str:
    """The key of attempt ``attempt``'s resume point."""
    return f"{PREFIX}{attempt}:resume"


class Journal:
    """The journal state of one attempt of a live run.

    Args:
        attempt: the attempt it belongs to.
        base: chunks the run's own producers had written per stream before a restart
            (replayed puts are dropped until the count reaches it); empty for a fresh attempt.
        replaying: the attempt is being replayed (each durable call reads the store).
    """

    # One is made for every attempt that makes a durable call (a run parked in ``wait()``
    # holds one): slotted, and the replay's ``base`` is made only for a replay.
    __slots__ = ("attempt", "base", "calls", "frontier", "pending", "replaying", "writes")

    def __init__(self, attempt: int, base: dict[str, int] | None = None,
                 replaying: bool = False, frontier: str | None = None) -> None:
        self.attempt = attempt
        self.base: dict[str, int] | None = dict(base) if base else None
        self.replaying = replaying
        self.calls: dict[str, int] = {}
        self.writes: dict[str, int] = {}
        #: the pending wait this attempt is suspended in, if any
        self.pending: str | None = None
        #: while replaying: the pending wait the replay ends in (``None``: none)
        self.frontier = frontier

    def next_key(self, kind: str, name: str) -> str:
        """The key of this call: the call's kind and name, and how many came before it."""
        head = f"{PREFIX}{self.attempt}:{kind}:{name}"
        index = self.calls.get(head, 0)
        self.calls[head] = index + 1
        return f"{head}#{index}"

    def drop(self, key: str, count: int) -> int:
        """``count`` chunks put to own stream ``key``: how many of them (a prefix) to drop
        because the run wrote them before the restart."""
        done = self.writes.get(key, 0)
        self.writes[key] = done + count
        if self.base is None:
            return 0
        return max(0, min(count, self.base.get(key, 0) - done))

    def skip(self, writes: dict[str, Any]) -> None:
        """A replayed step is skipped: count the chunks it wrote as written."""
        for key, count in writes.items():
            if isinstance(count, int):
                self.writes[key] = self.writes.get(key, 0) + count

    def end_replay(self) -> None:
        """From here on the run executes for real: nothing is read or dropped any more."""
        self.replaying = False
        self.base = None
