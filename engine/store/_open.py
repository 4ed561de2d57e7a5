"""Dispatch by URL scheme: the store for a URL."""

from __future__ import annotations

from ._base import Store
from ._errors import StoreConfigError
from ._memory import MemoryStore
from ._sqlite import SqliteStore


def open_store(url: str) -> Store:
    """Make the store for a URL: ``memory://``, ``sqlite:///path``, ``redis://host:port/db``.

    Raises:
        StoreConfigError: the URL's scheme is not supported, or the URL is malformed.
    """
    if not isinstance(url, str):
        raise TypeError("store must be a URL string such as 'memory://' or 'sqlite:///runwire.db'")
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        return SqliteStore.from_url(url)
    if scheme == "redis":
        from ._redis import RedisStore  # coredis is imported only by engines that use it
        return RedisStore.from_url(url)
    raise StoreConfigError(f"unsupported store URL {url!r}: use memory://, sqlite:///path "
                           f"or redis://host:port/db")
