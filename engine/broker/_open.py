"""The broker for a store: shared through Redis for ``redis://``, else this process's own."""

from __future__ import annotations

from ..store import Store
from ._base import Broker, LocalBroker


def open_broker(store: Store) -> Broker:
    """A :class:`RedisBroker` on a Redis store (many engines share it), else a
    :class:`LocalBroker`."""
    if store.scheme == "redis":
        from ..store._redis import RedisStore
        from ._redis import RedisBroker  # coredis is imported only by engines that use it

        assert isinstance(store, RedisStore)
        return RedisBroker(store)
    return LocalBroker()

