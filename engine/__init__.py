"""runwire engine: run actors, stores, the websocket front door and the CLI."""

from ._actor import RunActor as RunActor
from ._auth import Auth as Auth
from ._auth import Grant as Grant
from ._engine import Engine as Engine
from ._engine import Limits as Limits
from ._engine import open_engine as open_engine
from ._memory_store import MemoryStore as MemoryStore
from ._sqlite_store import SqliteStore as SqliteStore
from ._status import TRANSITIONS as TRANSITIONS
from ._store import Store as Store
from ._store import open_store as open_store
from ._streams import InputMailbox as InputMailbox
from ._streams import OutputStream as OutputStream
from ._streams import Producer as Producer
