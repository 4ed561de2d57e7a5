"""The service: run operations (trigger, send, append, cancel, retrieve, subscribe, read,
tokens) that every door calls, over a store and a broker."""

from ._auth import Auth as Auth
from ._auth import Grant as Grant
from ._auth import fingerprint as fingerprint
from ._auth import generate_api_key as generate_api_key
from ._service import RunService as RunService
from ._service import TriggerOptions as TriggerOptions
from ._dstreams import AppendResult as AppendResult
from ._dstreams import DurableStreams as DurableStreams
from ._dstreams import ReadResult as ReadResult
from ._dstreams import SharedDurableStreams as SharedDurableStreams
from ._dstreams import StreamError as StreamError
from ._dstreams import cursor_for as cursor_for
from ._dstreams import format_offset as format_offset
from ._dstreams import is_json as is_json
from ._dstreams import media_type as media_type
from ._dstreams import parse_offset as parse_offset
