"""Run metadata (``metadata.set/get``) and the legacy v1 ``metadata.stream``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ._convert import to_json
from ._streams import _check_key, _check_source
from .runtime import require_run


class _Metadata:
    """``metadata``: a JSON object per run; every change reaches run subscribers."""

    def set(self, key: str, value: Any) -> None:
        """Set one key (the change is stored and published without waiting)."""
        if not isinstance(key, str) or not key:
            raise TypeError("metadata keys are non-empty strings")
        require_run("metadata.set()").metadata_set(key, to_json(value))

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        value = require_run("metadata.get()").metadata_get(key)
        return default if value is None else value

    def current(self) -> dict[str, Any]:
        """A copy of the whole metadata object."""
        return require_run("metadata.current()").metadata_all()

    async def stream(self, key: str, source: Any) -> AsyncIterator[Any]:
        """Legacy v1: pipe ``source`` into stream ``key`` and return its chunks to iterate.

        The returned iterator may be left unconsumed; the run does not finish before the
        pipe has drained (``drain_timeout``, 60 s by default).
        """
        _check_source(source)
        return await require_run("metadata.stream()").legacy_stream(_check_key(key), source)


metadata = _Metadata()
