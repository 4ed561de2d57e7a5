"""Who may do what: the secret API key, and public access tokens (JWT, HS256, via PyJWT).

Theory of operation: a connection presents one credential in ``hello``. The engine's API key
(compared in constant time) grants everything. Anything else must be a JWT signed by this
engine, unexpired, whose ``scopes`` claim lists what it may do, as ``action:resource:id``
(``read:runs:<run id>``, ``write:inputStreams:<run id>``, ``trigger:tasks:<task id>``,
``read:tasks:<task id>``, ``write:streams:<run id>``, ``write:runs:<run id>``); an id of ``*``
or no id means every one. The signing key is derived from the API key, so tokens die with it.

A grant remembers when its token expires; the session checks that on every request, so a
long-lived connection does not outlive its token. Expiry is judged by ``Auth.clock`` (wall
seconds; an engine under a mock clock may point it at its own clock). Secrets never appear
in logs or error messages: messages name what is wrong, never the credential, and a grant
carries only a short fingerprint of it (for rate limits).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import jwt

from runwire import UnauthorizedError
from runwire.transport import check_scopes

ISSUER = "runwire"

#: How many verified tokens ``Auth`` remembers (a few hundred bytes each).
VERIFIED_TOKENS = 1024


def generate_api_key() -> str:
    """A fresh random API key."""
    return "rw_sk_" + secrets.token_urlsafe(32)


def fingerprint(credential: str) -> str:
    """A short, one-way name for a credential (safe to keep in memory or show in logs)."""
    return hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@attrs.frozen
class Grant:
    """What one connection may do.

    Attributes:
        admin: the engine's API key: everything is allowed.
        scopes: the token's scopes.
        expires_at: when the token expires (``Auth.clock`` seconds), ``None`` for never.
        key: a fingerprint of the credential, to key per-credential limits.
    """

    admin: bool = False
    scopes: frozenset[str] = frozenset()
    expires_at: float | None = None
    key: str = ""

    def allows(self, action: str, resource: str, ident: str, *,
               task_id: str | None = None) -> bool:
        """Whether ``action`` on ``resource`` ``ident`` is allowed.

        A ``read:tasks:<task id>`` scope also allows reading runs of that task.
        """
        if self.admin:
            return True
        base = f"{action}:{resource}"
        if base in self.scopes or f"{base}:*" in self.scopes or f"{base}:{ident}" in self.scopes:
            return True
        return (task_id is not None and resource == "runs" and action == "read"
                and f"read:tasks:{task_id}" in self.scopes)

    def expired(self, now: float) -> bool:
        """Whether the token has expired at ``now``."""
        return self.expires_at is not None and now >= self.expires_at


class Auth:
    """Checks credentials and makes public access tokens.

    Args:
        api_key: the engine's secret key.
        clock: wall-clock seconds, used to stamp and check token expiry.
    """

    def __init__(self, api_key: str, *, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(api_key, str) or len(api_key) < 8:
            raise ValueError("the API key must be a string of at least 8 characters")
        self._api_key = api_key.encode()
        self._signing_key = hmac.new(self._api_key, b"runwire public tokens v1",
                                     hashlib.sha256).digest()
        self.clock = clock
        #: tokens verified before, and their grants (a token's claims are fixed by its
        #: signature): the next request with one skips the JWT decode (tens of microseconds)
        #: but not the expiry check. Oldest out first beyond ``VERIFIED_TOKENS``.
        self._verified: dict[str, Grant] = {}

    def __repr__(self) -> str:
        return "<Auth (secrets hidden)>"

    def authenticate(self, token: str) -> Grant:
        """The grant for a credential.

        Raises:
            UnauthorizedError: unknown, malformed, tampered or expired credential (the
                message never repeats the credential).
        """
        if not isinstance(token, str) or not token:
            raise UnauthorizedError("a credential is required")
        raw = token.encode("utf-8", "surrogatepass")
        if hmac.compare_digest(raw, self._api_key):
            return Grant(admin=True, key="api-key")
        grant = self._verified.get(token)
        if grant is None:
            claims = self._claims(token)
            scopes = claims.get("scopes")
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                raise UnauthorizedError("the access token has no valid scopes")
            grant = Grant(scopes=frozenset(scopes), expires_at=float(claims["exp"]),
                          key=fingerprint(token))
            verified = self._verified
            if len(verified) >= VERIFIED_TOKENS:
                del verified[next(iter(verified))]
            verified[token] = grant
        if grant.expired(self.clock()):  # the same check every later request makes
            raise UnauthorizedError("the access token has expired")
        return grant

    def _claims(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(token, self._signing_key, algorithms=["HS256"], issuer=ISSUER,
                                options={"require": ["exp", "iss", "scopes"],
                                         "verify_exp": False, "verify_iat": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            raise UnauthorizedError("the credential is not a valid API key or access token") \
                from None
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
            raise UnauthorizedError("the access token has no valid expiry")
        return claims

    def create_token(self, scopes: Iterable[str], expires_in: float = 900.0,
                     subject: str = "public") -> str:
        """A signed public access token carrying ``scopes`` for ``expires_in`` seconds.

        Raises:
            ValueError: a scope is malformed, or ``expires_in`` is not a positive number.
        """
        return self.issue(scopes, expires_in, subject)[0]

    def issue(self, scopes: Iterable[str], expires_in: float,
              subject: str = "public") -> tuple[str, float]:
        """:meth:`create_token`, and the expiry signed into the token (``exp``)."""
        scope_list = check_scopes(list(scopes) if not isinstance(scopes, str) else scopes)
        if (isinstance(expires_in, bool) or not isinstance(expires_in, (int, float))
                or not math.isfinite(expires_in) or expires_in <= 0):
            raise ValueError("expires_in must be a positive number of seconds")
        now = self.clock()
        exp = round(now + expires_in, 3)
        claims = {"iss": ISSUER, "sub": subject, "iat": int(now), "exp": exp,
                  "scopes": scope_list}
        return jwt.encode(claims, self._signing_key, algorithm="HS256"), exp

    def run_token(self, run_id: str, expires_in: float = 86400.0) -> str:
        """The token ``trigger`` returns: read that run, send to its input streams."""
        return self.create_token([f"read:runs:{run_id}", f"write:inputStreams:{run_id}"],
                                 expires_in, subject=run_id)
