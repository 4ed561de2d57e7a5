"""``python -m runwire.engine serve``: prints its URL, serves tasks, stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from runwire import connect, runs, streams, tasks

ROOT = Path(__file__).parent.parent
KEY = "cli-test-key-0123456789"


async def _start(*extra: str) -> tuple[trio.Process, str, str]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "runwire.engine", "serve", "--tasks", "examples.quickstart",
         "--store", "memory://", "--port", "0", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = b""
    with trio.fail_after(20):
        while b"serving ws://" not in seen or not seen.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, f"engine exited early: {seen.decode()}"
            seen += chunk
    url = re.search(rb"serving (ws://\S+)", seen).group(1).decode()
    return proc, url, seen.decode()


async def _read_rest(proc: trio.Process) -> str:
    out = b""
    while chunk := await proc.stdout.receive_some(4096):
        out += chunk
    return out.decode()


async def test_serve_prints_url_serves_and_stops_on_sigint():
    proc, url, _ = await _start("--api-key", KEY)
    try:
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/v1", url)
        async with connect(url, api_key=KEY):
            handle = await tasks.trigger("generate", {"prompt": "hi"})
            words = await (await streams.read(handle.id, "ai-output")).collect()
            assert "".join(words).startswith("Structured concurrency")
            assert (await runs.retrieve(handle.id)).status.value == "COMPLETED"
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            rest = await _read_rest(proc)
            code = await proc.wait()
        assert code == 0, rest
        assert "stopped" in rest
        assert "Traceback" not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _stop(proc: trio.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        await _read_rest(proc)
        return await proc.wait()


async def test_serve_uses_env_api_key(monkeypatch):
    monkeypatch.setenv("RUNWIRE_API_KEY", KEY)
    proc, url, banner = await _start()
    try:
        assert "generated API key" not in banner
        async with connect(url, api_key=KEY):
            pass
    finally:
        assert await _stop(proc) == 0


async def test_serve_generates_and_prints_a_key_once(monkeypatch):
    monkeypatch.delenv("RUNWIRE_API_KEY", raising=False)
    proc, url, banner = await _start()
    try:
        keys = re.findall(r"generated API key \(shown once\): (\S+)", banner)
        assert len(keys) == 1
        async with connect(url, api_key=keys[0]):
            pass
    finally:
        assert await _stop(proc) == 0


def test_unknown_tasks_module_is_a_clear_error():
    result = subprocess.run(
        [sys.executable, "-m", "runwire.engine", "serve", "--tasks", "no_such_module_xyz",
         "--store", "memory://", "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "no_such_module_xyz" in result.stderr


def test_retention_takes_seconds_or_a_duration():
    from runwire.engine._cli import _parser

    def retention(*value: str) -> float:
        return _parser().parse_args(["serve", *value]).retention

    assert retention() == 28 * 86400.0
    assert retention("--retention", "3600") == 3600.0
    assert retention("--retention", "12h") == 12 * 3600.0
    result = subprocess.run(
        [sys.executable, "-m", "runwire.engine", "serve", "--retention", "soon", "--store", "memory://"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2  # an argparse usage error, not a traceback
    assert "--retention" in result.stderr and "Traceback" not in result.stderr


def test_serve_sets_the_connection_limits(monkeypatch):
    from runwire.engine import Limits
    from runwire.engine._cli import _parser, serve_limits

    def limits(*flags: str) -> Limits:
        return serve_limits(_parser().parse_args(["serve", *flags]))

    assert limits() == Limits(retention=28 * 86400.0)
    got = limits("--max-connections-per-address", "none", "--ping-interval", "5",
                 "--ping-timeout", "2.5", "--idle-timeout", "none")
    assert (got.max_connections_per_address, got.ping_interval, got.ping_timeout,
            got.idle_timeout) == (None, 5.0, 2.5, None)
    assert limits("--max-connections-per-address", "8").max_connections_per_address == 8
    monkeypatch.setenv("RUNWIRE_PING_INTERVAL", "none")
    assert limits().ping_interval is None
    for flag, bad in (("--ping-interval", "0"), ("--ping-timeout", "none"),
                      ("--idle-timeout", "-1"), ("--max-connections-per-address", "0"),
                      ("--max-connections-per-address", "many")):
        result = subprocess.run(
            [sys.executable, "-m", "runwire.engine", "serve", flag, bad, "--store", "memory://"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and flag in result.stderr, (flag, bad, result.stderr)
        assert "Traceback" not in result.stderr
