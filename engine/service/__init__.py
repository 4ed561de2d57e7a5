"""The service: run operations (trigger, send, append, cancel, retrieve, subscribe, read,
tokens) that every door calls, over a store and a broker."""

from ._auth import Auth as Auth
from ._auth import Grant as Grant
from ._auth import fingerprint as fingerprint
from ._auth import generate_api_key as generate_api_key
from ._service import RunService as RunService
from ._service import ServiceStatistics as ServiceStatistics
from ._service import TriggerOptions as TriggerOptions
