"""The broker: which engine owns a live run, and a task queue's slots (see ``_base``)."""

from ._base import Broker as Broker
from ._base import BrokerStatistics as BrokerStatistics
from ._base import LocalBroker as LocalBroker
