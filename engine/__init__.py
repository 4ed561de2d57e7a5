"""runwire engine: what a service embeds to run tasks and serve their streams.

Inside, requests flow door -> service -> run -> store, with the broker beside the store
(``docs/architecture.md``); those layers are the subpackages ``door``, ``service``, ``run``,
``store`` and ``broker``. This facade exports what a service needs.
"""

from ._engine import Engine as Engine
from ._engine import EngineStatistics as EngineStatistics
from ._engine import ServingEngine as ServingEngine
from ._engine import open_engine as open_engine
from ._limits import Limits as Limits
from ._thread import EngineThread as EngineThread
from .store import IndexGapError as IndexGapError
from .store import NotCompactError as NotCompactError
from .store import Store as Store
from .store import StoreClosedError as StoreClosedError
from .store import StoreConfigError as StoreConfigError
from .store import StoreError as StoreError
from .store import StoreUnavailableError as StoreUnavailableError
from .store import open_store as open_store
