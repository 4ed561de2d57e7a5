"""Stores: where runs, stream logs, input logs and waitpoints are kept (memory, SQLite, Redis).

The lowest layer of the engine: it imports nothing of the engine above it.
"""

from ._base import Batch as Batch
from ._base import ChunkAppend as ChunkAppend
from ._base import DurableStream as DurableStream
from ._base import RecordAppend as RecordAppend
from ._base import RunFilter as RunFilter
from ._base import Store as Store
from ._base import StoredRecord as StoredRecord
from ._base import StoredToken as StoredToken
from ._base import StreamState as StreamState
from ._base import StreamWrite as StreamWrite
from ._base import Waitpoint as Waitpoint
from ._open import open_store as open_store
from ._errors import DuplicateRunError as DuplicateRunError
from ._errors import IndexGapError as IndexGapError
from ._errors import LeaseLostError as LeaseLostError
from ._errors import NotCompactError as NotCompactError
from ._errors import StoreClosedError as StoreClosedError
from ._errors import StoreConfigError as StoreConfigError
from ._errors import StoreError as StoreError
from ._errors import StoreFullError as StoreFullError
from ._errors import StoreUnavailableError as StoreUnavailableError
from ._errors import client_message as client_message
from ._memory import MemoryStore as MemoryStore
from ._sqlite import SqliteStore as SqliteStore
from ._sqlite import backup_database as backup_database
