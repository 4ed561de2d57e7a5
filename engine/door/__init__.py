"""Doors: how requests reach the service. A door-neutral layer (:class:`Door`,
:class:`Caller`: authorize, rate-limit, validate, call the service), the websocket door on
top of it (:class:`Session`) and the HTTP door (:class:`HttpDoor`), both served on one port
by :class:`EngineServer`."""

from ._rates import RateLimiter as RateLimiter
from ._requests import Caller as Caller
from ._requests import Door as Door
from ._routes import HttpDoor as HttpDoor
from ._server import PATH as PATH
from ._server import EngineServer as EngineServer
from ._session import Session as Session
