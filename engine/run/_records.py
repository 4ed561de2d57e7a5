"""The engine's own run record; the wire and the SDK see it through :meth:`RunRecord.to_wire`."""

from __future__ import annotations

import time
import uuid
from typing import Any

import attrs

from runwire import RunStatus

from ._status import check_transition


def new_run_id() -> str:
    """A fresh run id: ``run_`` and 24 hex digits."""
    return "run_" + uuid.uuid4().hex[:24]


@attrs.define
class RunRecord:
    """Everything stored about one run (mutable; only its actor changes it)."""

    id: str
    task_id: str
    payload: Any = None
    status: RunStatus = RunStatus.QUEUED
    output: Any = None
    error: dict[str, str] | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    tags: list[str] = attrs.field(factory=list)
    attempt: int = 1
    parent_id: str | None = None
    root_id: str | None = None
    streams: list[str] = attrs.field(factory=list)
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    idempotency_key: str | None = None

    def set_status(self, new: RunStatus, now: float) -> None:
        """Change status through the transition table; stamps start and finish times."""
        check_transition(self.status, new)
        self.status = new
        if new is RunStatus.EXECUTING and self.started_at is None:
            self.started_at = now
        if new.is_final:
            self.finished_at = now

    def to_wire(self) -> dict[str, Any]:
        """The ``run`` object of the wire protocol."""
        return {
            "id": self.id, "task_id": self.task_id, "status": self.status.value,
            "payload": self.payload, "output": self.output, "error": self.error,
            "metadata": self.metadata, "tags": self.tags, "attempt": self.attempt,
            "parent_id": self.parent_id, "root_id": self.root_id or self.id,
            "streams": self.streams, "created_at": self.created_at,
            "started_at": self.started_at, "finished_at": self.finished_at,
        }

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_wire` (stores keep runs in this form)."""
        return cls(
            id=raw["id"], task_id=raw["task_id"], payload=raw.get("payload"),
            status=RunStatus(raw["status"]), output=raw.get("output"), error=raw.get("error"),
            metadata=dict(raw.get("metadata") or {}), tags=list(raw.get("tags") or []),
            attempt=raw.get("attempt", 1), parent_id=raw.get("parent_id"),
            root_id=raw.get("root_id"), streams=list(raw.get("streams") or []),
            created_at=raw.get("created_at") or time.time(), started_at=raw.get("started_at"),
            finished_at=raw.get("finished_at"), idempotency_key=raw.get("idempotency_key"),
        )

    def to_store(self) -> dict[str, Any]:
        return {**self.to_wire(), "idempotency_key": self.idempotency_key}
