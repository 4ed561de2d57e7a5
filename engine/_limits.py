"""Every limit the engine enforces, in one frozen value that each layer reads.

Below every layer of the engine (door, service, run and store all read it; it imports none
of them). ``docs/security.md`` lists each limit with its default and the error a client gets.
"""

from __future__ import annotations

import attrs

MiB = 1024 * 1024
DAY = 86400.0

#: Chunks a producer buffers before ``put`` waits for the run's commit cycle.
PRODUCER_HIGH_WATER = 8192


@attrs.frozen
class Limits:
    """Every limit the engine enforces (all configurable through ``open_engine(limits=...)``).

    ``docs/security.md`` lists each with its default and the error a client gets. The rates
    are token buckets per credential: ``*_rate`` requests per second on average, bursts of
    up to ``*_burst``; a rate of ``None`` turns that limit off.
    """

    max_stream_bytes: int = 300 * MiB
    max_record_bytes: int = 1 * MiB
    max_chunk_bytes: int = 1 * MiB
    max_payload_bytes: int = 3 * MiB
    max_message_bytes: int = 16 * MiB
    frame_items: int = 1024
    frame_bytes: int = 1 * MiB
    producer_buffer: int = PRODUCER_HIGH_WATER  # chunks a producer buffers before put waits
    live_tail: int = PRODUCER_HIGH_WATER  # >= producer_buffer, so live readers stay in memory
    mailbox_size: int = 1024
    retention: float = 28 * DAY
    sweep_interval: float = 3600.0
    max_connections: int = 1024
    max_requests_per_connection: int = 1024
    handshake_timeout: float = 10.0
    trigger_rate: float | None = 100.0
    trigger_burst: int = 1000
    send_rate: float | None = 1000.0
    send_burst: int = 10000
    rate_limit_api_key: bool = False
    max_token_lifetime: float = 30 * DAY
    max_key_chars: int = 256
    max_http_body: int = 16 * MiB  # an HTTP request body (413 beyond)
    http_read_timeout: float = 30.0  # a request's head or body stalled this long: 408, closed
    long_poll_timeout: float = 10.0  # a long-poll read answers 204 after this long
    sse_interval: float = 60.0  # an SSE response is closed after this long; clients resume
    max_durable_streams: int = 100_000  # free-standing durable streams on one engine
    # --- dead links and hostile connections (docs/security.md, "Connections") ---
    ping_interval: float | None = 20.0  # the engine pings a websocket with a request open
    ping_timeout: float = 20.0  # no pong this long after a ping: the connection is dropped
    idle_timeout: float | None = 600.0  # no request open and nothing received: closed (1001)
    message_timeout: float = 30.0  # a message must arrive whole this soon after its first byte
    max_hello_bytes: int = 16 * 1024  # largest message before the hello is accepted (1009)
    read_batches_per_connection: int = 4  # batches of chunks a connection's reads hold at once
    max_connections_per_address: int | None = 256  # TCP connections from one client address
    max_connections_per_credential: int | None = 64  # sessions of one public access token
    max_reads_per_credential: int | None = 1024  # open reads+subscriptions of one token
    max_reads_per_address: int | None = 4096  # open reads+subscriptions from one address
