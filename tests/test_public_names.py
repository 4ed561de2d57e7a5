"""The public names of each package are pinned: tests outside this repo import exactly these."""

import importlib

import pytest

PUBLIC = {
    "runwire": {
        "task", "schema_task", "streams", "metadata", "runs", "tasks", "wait", "step",
        "logger",
        "connect", "Client", "Queue", "RetryPolicy", "Run", "RunContext", "RunError",
        "RunHandle", "RunInfo", "RunStatus", "TaskRunResult", "InputResult", "InputStreamDef",
        "Subscription", "StreamDef", "StreamReader", "StreamWriter", "PipeResult",
        "WriterResult", "RunPart", "RunSubscription", "Task",
        "RunwireError", "UnauthorizedError", "ForbiddenError", "NotFoundError",
        "RunFinishedError", "PayloadTooLargeError", "StreamTooLargeError", "BadFrameError",
        "UnknownTaskError", "InvalidPayloadError", "RateLimitedError", "InternalError",
        "StreamTimeoutError", "InputStreamTimeoutError", "TaskRunError", "OutsideRunError",
        "auth", "__version__", "ClientStatistics", "AppendResult", "PendingResult",
        "TeeOverflowError", "tool_task", "ToolTask", "ToolSpec", "RunList", "WaitpointToken",
        "WaitpointTimeoutError", "sse_event", "sse_events", "sse_response",
        "AsyncioInTaskError", "run_asyncio",
    },
    "runwire.engine": {
        "open_engine", "Engine", "ServingEngine", "EngineThread", "EngineStatistics", "Limits", "Store",
        "open_store", "StoreError", "StoreConfigError", "StoreUnavailableError",
        "StoreClosedError", "IndexGapError", "NotCompactError",
    },
    "runwire.engine.store": {
        "Store", "Batch", "ChunkAppend", "RecordAppend", "Waitpoint", "StreamState",
        "StoredRecord", "StoredToken", "RunFilter", "open_store", "MemoryStore", "SqliteStore",
        "StoreError", "backup_database",
        "StoreConfigError", "StoreUnavailableError", "StoreClosedError", "IndexGapError",
        "NotCompactError", "DurableStream", "StreamWrite", "StoreFullError", "client_message",
        "DuplicateRunError", "LeaseLostError",
    },
    "runwire.engine.run": {
        "RunActor", "RunEnv", "RunServices", "QueueSlots", "Reader", "ReadTimeout", "RunRecord",
        "MovedWhileStoringError", "RunUnreachableError",
        "new_run_id", "TRANSITIONS", "InvalidTransition", "check_transition", "InputMailbox",
        "OutputStream", "Producer", "MissingRunProducer", "ExternalAppend", "SendInput",
        "RunStatistics", "StreamStatistics", "Journal", "resume_key",
    },
    "runwire.engine.broker": {"Broker", "BrokerStatistics", "LocalBroker", "NotLiveError",
                              "RemoteError", "RequestHandler", "RunWatch", "open_broker"},
    "runwire.engine.service": {
        "RunService", "TriggerOptions", "Auth", "Grant", "fingerprint",
        "generate_api_key", "DurableStreams", "SharedDurableStreams", "AppendResult",
        "ReadResult", "StreamError", "cursor_for", "format_offset", "is_json", "media_type",
        "parse_offset",
    },
    "runwire.engine.door": {"Door", "Caller", "Session", "EngineServer", "HttpDoor", "RateLimiter",
                            "PATH"},
    "runwire.transport": {
        "encode", "decode", "unstructure", "Protocol", "Role", "State", "Connection",
        "MemoryPipe", "connect_websocket", "memory_connection_pair", "AsyncioConnection",
        "connect_websocket_asyncio", "memory_pipe_pair", "wrap_server_stream",
        "TransportError", "LocalProtocolError", "RemoteProtocolError", "ConnectionBroken",
        "ConnectionClosed", "FRAME_TYPES", "CLIENT_FRAMES", "ENGINE_FRAMES", "PROTOCOL_VERSION",
        "Frame", "Hello", "Welcome", "Read", "Chunks", "End", "Append", "Send", "Ack",
        "Trigger", "Triggered", "Subscribe", "Retrieve", "RunInfo", "CancelRun", "Cancel",
        "Error", "CreateToken", "Token", "ListRuns", "CreateWaitpoint", "CompleteWaitpoint",
        "RetrieveWaitpoint", "RunList", "WaitpointInfo",
        "json_bytes", "json_bytes_many", "json_bytes_within", "check_scopes", "SCOPE_KINDS",
        "MAX_SCOPES", "MAX_SCOPE_CHARS", "CLOSE_UNSUPPORTED", "CLOSE_INVALID_DATA",
        "CLOSE_INTERNAL", "CLOSE_TRY_AGAIN", "CLOSE_UNAUTHORIZED", "CLOSE_BAD_PROTOCOL",
        "CLOSE_GOING_AWAY", "CLOSE_POLICY", "ServerWebSocket", "wrap_server_stream",
    },
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_names_are_importable(package):
    module = importlib.import_module(package)
    missing = {name for name in PUBLIC[package] if not hasattr(module, name)}
    assert not missing, f"{package} lost public names: {sorted(missing)}"


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_init_only_reexports(package):
    module = importlib.import_module(package)
    public = {n for n in vars(module) if not n.startswith("_")}
    submodules = {n for n in public if type(getattr(module, n)).__name__ == "module"}
    extra = public - PUBLIC[package] - submodules
    # New public names are fine, but they must be added here on purpose.
    assert not extra, f"{package} exports names not pinned by this test: {sorted(extra)}"


def test_the_engine_facade_hides_run_internals():
    """A service embeds the engine; actors, streams and mailboxes are not its business."""
    import runwire.engine

    for name in ("RunActor", "OutputStream", "Producer", "InputMailbox", "Auth", "Grant"):
        assert not hasattr(runwire.engine, name)


def test_status_values_match_spec():
    from runwire import RunStatus

    assert [s.value for s in RunStatus] == [
        "QUEUED", "EXECUTING", "WAITING", "COMPLETED", "FAILED", "CANCELED", "CRASHED",
        "TIMED_OUT"]


def test_stream_timeout_is_a_timeout_error():
    from runwire import InputStreamTimeoutError, StreamTimeoutError

    assert issubclass(StreamTimeoutError, TimeoutError)
    assert issubclass(InputStreamTimeoutError, TimeoutError)
