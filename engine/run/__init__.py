"""Runs: one actor per live run, its streams, producers, readers and input mailboxes.

An actor is built from values and callbacks (:class:`RunEnv`, its queue slots) and never
imports the layers above it (service, door, engine); below it is only the store.
"""

from ._actor import ExternalAppend as ExternalAppend
from ._actor import MovedWhileStoringError as MovedWhileStoringError
from ._actor import RunActor as RunActor
from ._actor import RunStatistics as RunStatistics
from ._actor import RunUnreachableError as RunUnreachableError
from ._actor import SendInput as SendInput
from ._env import QueueSlots as QueueSlots
from ._journal import Journal as Journal
from ._journal import resume_key as resume_key
from ._env import RunEnv as RunEnv
from ._env import RunServices as RunServices
from ._reader import Reader as Reader
from ._reader import ReadTimeout as ReadTimeout
from ._records import RunRecord as RunRecord
from ._records import new_run_id as new_run_id
from ._status import TRANSITIONS as TRANSITIONS
from ._status import InvalidTransition as InvalidTransition
from ._status import check_transition as check_transition
from ._streams import InputMailbox as InputMailbox
from ._streams import MissingRunProducer as MissingRunProducer
from ._streams import OutputStream as OutputStream
from ._streams import Producer as Producer
from ._streams import StreamStatistics as StreamStatistics
