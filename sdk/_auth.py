"""``auth``: public access tokens, made by the engine for a backend that holds the API key.

Theory of operation: the SDK does not know how tokens are signed. ``create_public_token``
sends a ``create_token`` frame on the connected client and returns the engine's answer; the
engine refuses it unless the client connected with the API key. Scopes are checked here for
shape (so a typo fails at once, locally) and again by the engine, which is the authority.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from runwire.transport import CreateToken, Token, check_scopes

from ._client import Client
from ._duration import parse_duration
from ._errors import OutsideRunError
from .runtime import current_backend, current_run

#: Default lifetime of a public token.
DEFAULT_EXPIRATION = "15m"
class _Auth:
    """``auth.create_public_token(...)``."""

    async def create_public_token(self, *, scopes: Iterable[str] | Mapping[str, Any],
                                  expiration: float | str | datetime.timedelta =
                                  DEFAULT_EXPIRATION, client: Client | None = None) -> str:
        """A signed token that allows only ``scopes``, until ``expiration`` from now.

        Args:
            scopes: strings such as ``"read:runs:<run id>"``, ``"write:inputStreams:<run id>"``,
                ``"trigger:tasks:<task id>"`` (an id of ``*`` or none means all), or the same
                as a mapping ``{"read": {"runs": ["run_1", "run_2"]}, "trigger":
                {"tasks": True}}``.
            expiration: seconds, a string such as ``"1h"`` or ``"7d"``, or a timedelta.
            client: the client to ask (else the task, or the client ``connect()`` bound).

        Returns:
            The token, for ``connect(url, access_token=...)`` or a browser.

        Raises:
            ValueError: a scope or the expiration is malformed.
            ForbiddenError: the client is not connected with the API key.
            OutsideRunError: neither a task nor a connected client is here.
        """
        scope_list = normalize_scopes(scopes)
        seconds = _seconds(expiration)
        run = current_run() if client is None else None
        if run is not None:  # inside a task: the engine that runs it signs the token
            return await run.create_token(scope_list, seconds)
        client = _client(client)
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


def _client(client: Client | None) -> Client:
    backend = current_backend(client)
    if not isinstance(backend, Client):
        raise OutsideRunError("auth.create_public_token needs a task or "
                              "'async with connect(url, api_key=...)'")
    return backend


auth = _Auth()
