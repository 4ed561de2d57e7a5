"""Doors: how requests reach the service. A door-neutral layer (:class:`Door`,
:class:`Caller`: authorize, rate-limit, validate, call the service) and the websocket door on
top of it (:class:`Session`, :class:`WebsocketServer`)."""

from ._rates import RateLimiter as RateLimiter
from ._requests import Caller as Caller
from ._requests import Door as Door
from ._server import PATH as PATH
from ._server import WebsocketServer as WebsocketServer
from ._session import Session as Session
