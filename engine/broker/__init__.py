"""The broker: which engine owns a live run, and a task queue's slots (see ``_base``)."""

from ._base import Broker as Broker
from ._base import BrokerStatistics as BrokerStatistics
from ._base import LocalBroker as LocalBroker
from ._base import NotLiveError as NotLiveError
from ._base import RemoteError as RemoteError
from ._base import RequestHandler as RequestHandler
from ._base import RunWatch as RunWatch
from ._open import open_broker as open_broker
