"""``logger``: standard logging, tagged with the current run id when inside a run."""

from __future__ import annotations

import logging
from typing import Any

from .runtime import current_run

_log = logging.getLogger("runwire.task")


class _Logger:
    """``logger.info("...", key=value)``: goes to the ``runwire.task`` logger.

    ``log`` (INFO), ``debug``, ``info``, ``warn``/``warning``, ``error``.
    """

    def _emit(self, level: int, message: str, fields: dict[str, Any]) -> None:
        run = current_run()
        extra = {"run_id": run.context.run.id if run else None, **fields}
        suffix = " ".join(f"{k}={v!r}" for k, v in extra.items() if v is not None)
        _log.log(level, "%s %s", message, suffix, extra={"runwire": extra})

    def log(self, message: str, **fields: Any) -> None:
        """Like TypeScript's ``logger.log``: an ordinary message, logged at INFO."""
        self._emit(logging.INFO, message, fields)

    def debug(self, message: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit(logging.INFO, message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit(logging.WARNING, message, fields)

    warning = warn

    def error(self, message: str, **fields: Any) -> None:
        self._emit(logging.ERROR, message, fields)


logger = _Logger()
