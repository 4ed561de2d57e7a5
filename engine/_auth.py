"""Who may do what: the secret API key, and public access tokens (JWT, HS256, via PyJWT).

Theory of operation: a connection presents one credential in ``hello``. The engine's API key
(compared in constant time) grants everything. Anything else must be a JWT signed by this
engine, unexpired, whose ``scopes`` claim lists what it may do, as ``action:resource:id``
(``read:runs:<run id>``, ``write:inputStreams:<run id>``, ``trigger:tasks:<task id>``,
``read:tasks:<task id>``, ``write:streams:<run id>``, ``write:runs:<run id>``); an id of ``*``
or no id means every one. The signing key is derived from the API key, so tokens die with it.
Secrets never appear in logs or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

import attrs
import jwt

from sdk import UnauthorizedError

ISSUER = "runwire"


def generate_api_key() -> str:
    """A fresh random API key."""
    return "rw_sk_" + secrets.token_urlsafe(32)


@attrs.frozen
class Grant:
    """What one connection may do."""

    admin: bool = False
    scopes: frozenset[str] = frozenset()
    subject: str = "anonymous"

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


class Auth:
    """Checks credentials and makes public access tokens.

    Args:
        api_key: the engine's secret key.
    """

    def __init__(self, api_key: str) -> None:
        if not isinstance(api_key, str) or len(api_key) < 8:
            raise ValueError("the API key must be a string of at least 8 characters")
        self._api_key = api_key.encode()
        self._signing_key = hmac.new(self._api_key, b"runwire public tokens v1",
                                     hashlib.sha256).digest()

    def authenticate(self, token: str) -> Grant:
        """The grant for a credential.

        Raises:
            UnauthorizedError: unknown, malformed, tampered or expired credential (the
                message never repeats the credential).
        """
        if not isinstance(token, str) or not token:
            raise UnauthorizedError("a credential is required")
        if hmac.compare_digest(token.encode(), self._api_key):
            return Grant(admin=True, subject="api-key")
        try:
            claims = jwt.decode(token, self._signing_key, algorithms=["HS256"], issuer=ISSUER,
                                options={"require": ["exp", "iss", "scopes"]})
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("the access token has expired") from None
        except jwt.PyJWTError:
            raise UnauthorizedError("the credential is not a valid API key or access token") \
                from None
        scopes = claims.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise UnauthorizedError("the access token has no valid scopes")
        return Grant(scopes=frozenset(scopes), subject=str(claims.get("sub", "token")))

    def create_token(self, scopes: Iterable[str], expires_in: float = 3600.0,
                     subject: str = "public") -> str:
        """A signed public access token carrying ``scopes`` for ``expires_in`` seconds."""
        scope_list = sorted(set(scopes))
        if not all(isinstance(s, str) and s for s in scope_list):
            raise ValueError("scopes are non-empty strings such as 'read:runs:<id>'")
        if not isinstance(expires_in, (int, float)) or expires_in <= 0:
            raise ValueError("expires_in must be a positive number of seconds")
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "iat": now, "exp": now + int(expires_in),
                  "scopes": scope_list}
        return jwt.encode(claims, self._signing_key, algorithm="HS256")

    def run_token(self, run_id: str, expires_in: float = 86400.0) -> str:
        """The token ``trigger`` returns: read that run, send to its input streams."""
        return self.create_token([f"read:runs:{run_id}", f"write:inputStreams:{run_id}"],
                                 expires_in, subject=run_id)
