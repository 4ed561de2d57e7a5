"""Durations as users write them: ``30`` (seconds), ``"500ms"``, ``"10s"``, ``"5m"``, ``"2h"``, ``"7d"``."""

from __future__ import annotations

import re
from typing import Any

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(value: Any, what: str = "duration") -> float | None:
    """Seconds for ``value``; ``None`` stays ``None`` (no limit).

    Raises:
        ValueError: the value is negative, not a number, or not of the form ``<number><unit>``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of seconds or a string like '7d'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{what} must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"{what} must be a number of seconds or a string like '30s', '5m', "
                     f"'2h', '7d'; got {value!r}")
