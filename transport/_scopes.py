"""The scope grammar of public access tokens: ``action:resource[:id]``.

One definition for the SDK (which checks scopes before it asks for a token) and the engine
(which checks every token it signs).
"""

from __future__ import annotations

import re
from typing import Any

#: The scopes a token may carry, as ``(action, resource)``; the id part is free. The SDK checks
#: scopes with :func:`check_scopes` before it asks for a token (a typo fails locally) and the
#: engine checks every token it signs with it.
SCOPE_KINDS = frozenset({
    ("read", "runs"), ("read", "tasks"), ("write", "inputStreams"), ("write", "streams"),
    ("write", "runs"), ("trigger", "tasks"), ("read", "waitpoints"), ("write", "waitpoints"),
})
#: Most scopes in one token, and the longest scope.
MAX_SCOPES = 64
MAX_SCOPE_CHARS = 256
_SCOPE = re.compile(r"^([A-Za-z]+):([A-Za-z]+)(?::(.+))?$", re.DOTALL)


def check_scopes(scopes: Any) -> list[str]:
    """The scopes, sorted and deduplicated, if every one is well formed.

    Raises:
        ValueError: not a non-empty list of ``action:resource[:id]`` strings of a known kind
            (``SCOPE_KINDS``), more than ``MAX_SCOPES`` of them, or one longer than
            ``MAX_SCOPE_CHARS``.
    """
    if not isinstance(scopes, (list, tuple, set, frozenset)) or not scopes:
        raise ValueError("scopes must be a non-empty list such as ['read:runs:<run id>']")
    if len(scopes) > MAX_SCOPES:
        raise ValueError(f"a token carries at most {MAX_SCOPES} scopes")
    for scope in scopes:
        _check_scope(scope)
    return sorted(set(scopes))


def _check_scope(scope: Any) -> None:
    if not isinstance(scope, str) or not 0 < len(scope) <= MAX_SCOPE_CHARS:
        raise ValueError(f"a scope is a string of 1-{MAX_SCOPE_CHARS} characters")
    match = _SCOPE.match(scope)
    if match is None or (match.group(1), match.group(2)) not in SCOPE_KINDS:
        known = ", ".join(sorted(f"{a}:{r}" for a, r in SCOPE_KINDS))
        raise ValueError(f"unknown scope {scope[:64]!r}; scopes are one of {known}, "
                         "optionally followed by ':<id>'")
