"""A real redis-server for the tests: one per test process, started on first use on a free
loopback port in a temporary directory, killed at exit.

Tests that need Redis call :func:`redis_url` (or :func:`start_redis` for a server of their
own, e.g. one they restart or fill up). Where ``redis-server`` is not installed they are
skipped, except under CI (``CI=true``), where that is a failure: ``.ci/run`` installs it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server"
                                          if os.path.exists("/usr/bin/redis-server") else None)


def require_redis() -> str:
    """The redis-server binary; skips the test (fails it under CI) when there is none."""
    if SERVER is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    return SERVER


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process (``--save ''`` and no AOF unless asked)."""

    def __init__(self, *args: str, port: int | None = None,
                 directory: Path | None = None) -> None:
        self.binary = require_redis()
        self.port = port or free_port()
        self.dir = directory or Path(tempfile.mkdtemp(prefix="runwire-redis-"))
        self.args = ["--save", "", "--appendonly", "no", *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--protected-mode", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start in 10 s")

    def command(self, *words: str) -> bytes:
        """Send one inline command, return the raw first reply (for test setup)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(" ".join(words).encode() + b"\r\n")
            return s.recv(65536)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def cpu_seconds(self) -> float:
        """user + system CPU seconds of the server so far (from /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_shared: RedisServer | None = None


def shared_redis() -> RedisServer:
    """This test process's redis-server (started on first use)."""
    global _shared
    if _shared is None or _shared.proc is None or _shared.proc.poll() is not None:
        _shared = RedisServer()
        atexit.register(_shared.kill)
    return _shared


def redis_url(name: str | None = None) -> str:
    """A URL on the shared server with its own key prefix: an empty store. The same
    ``name`` gives the same data (a store reopened)."""
    return f"{shared_redis().url}?prefix={name or 't' + uuid.uuid4().hex[:12]}"
