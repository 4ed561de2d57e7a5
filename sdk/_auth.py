"""``auth``: public access tokens, made by the engine for a backend that holds the API key.

Theory of operation: the SDK does not know how tokens are signed. ``create_public_token``
sends a ``create_token`` frame on the connected client and returns the engine's answer; the
engine refuses it unless the client connected with the API key. Scopes are checked here for
shape (so a typo fails at once, locally) and again by the engine, which is the authority.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any

from runwire.transport import CreateToken, Token

from ._client import Client
from ._duration import parse_duration
from ._errors import OutsideRunError
from .runtime import current_backend, current_run

#: Default lifetime of a public token.
DEFAULT_EXPIRATION = "15m"
#: The scopes a token may carry, as ``(action, resource)``; the id part is free. The engine
#: checks the scopes of every token it signs with the same :func:`check_scopes`, so a typo
#: fails here, locally.
SCOPE_KINDS = frozenset({
    ("read", "runs"), ("read", "tasks"), ("write", "inputStreams"), ("write", "streams"),
    ("write", "runs"), ("trigger", "tasks"),
})
#: Most scopes in one token, and the longest scope.
MAX_SCOPES = 64
MAX_SCOPE_CHARS = 256
_SCOPE = re.compile(r"^([A-Za-z]+):([A-Za-z]+)(?::(.+))?$", re.DOTALL)


class _Auth:
    """``auth.create_public_token(...)``."""

    async def create_public_token(self, *, scopes: Iterable[str] | Mapping[str, Any],
                                  expiration: float | str | datetime.timedelta =
                                  DEFAULT_EXPIRATION) -> str:
        """A signed token that allows only ``scopes``, until ``expiration`` from now.

        Args:
            scopes: strings such as ``"read:runs:<run id>"``, ``"write:inputStreams:<run id>"``,
                ``"trigger:tasks:<task id>"`` (an id of ``*`` or none means all), or the same
                as a mapping ``{"read": {"runs": ["run_1", "run_2"]}, "trigger":
                {"tasks": True}}``.
            expiration: seconds, a string such as ``"1h"`` or ``"7d"``, or a timedelta.

        Returns:
            The token, for ``connect(url, access_token=...)`` or a browser.

        Raises:
            ValueError: a scope or the expiration is malformed.
            ForbiddenError: the client is not connected with the API key.
            OutsideRunError: neither a task nor a connected client is here.
        """
        scope_list = normalize_scopes(scopes)
        seconds = _seconds(expiration)
        run = current_run()
        if run is not None:  # inside a task: the engine that runs it signs the token
            return await run.create_token(scope_list, seconds)
        client = _client()
        frame = await client._call(lambda rid: CreateToken(id=rid, scopes=scope_list,
                                                           expires_in=seconds))
        assert isinstance(frame, Token)
        return frame.token


def normalize_scopes(scopes: Iterable[str] | Mapping[str, Any]) -> list[str]:
    """Scope strings from a list of strings or an ``{action: {resource: ids}}`` mapping.

    Raises:
        ValueError: see :func:`check_scopes` (and one string instead of a list).
    """
    if isinstance(scopes, Mapping):
        found = list(_from_mapping(scopes))
    elif isinstance(scopes, str):
        raise ValueError("scopes is a list of strings, not one string")
    else:
        found = list(scopes)
    return check_scopes(found)


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


def _from_mapping(scopes: Mapping[str, Any]) -> Iterable[str]:
    for action, resources in scopes.items():
        if not isinstance(resources, Mapping):
            raise ValueError(f"scopes[{action!r}] must map resources to ids or True")
        for resource, ids in resources.items():
            if ids is True:
                yield f"{action}:{resource}"
            elif isinstance(ids, str):
                yield f"{action}:{resource}:{ids}"
            else:
                yield from (f"{action}:{resource}:{ident}" for ident in ids)


def _seconds(expiration: float | str | datetime.timedelta) -> float:
    if isinstance(expiration, datetime.timedelta):
        expiration = expiration.total_seconds()
    seconds = parse_duration(expiration, "expiration")
    if seconds is None or seconds <= 0:
        raise ValueError("expiration must be a positive duration such as 3600 or '1h'")
    return seconds


def _client() -> Client:
    backend = current_backend()
    if not isinstance(backend, Client):
        raise OutsideRunError("auth.create_public_token needs a task or "
                              "'async with connect(url, api_key=...)'")
    return backend


auth = _Auth()
