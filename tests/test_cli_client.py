"""``runwire runs|trigger|send|token`` against a real engine in a subprocess, and ``serve``
configured from the environment with ``--tasks`` given as a file path outside the checkout."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.slow  # a process per command: about a second each

KEY = "cli-client-key-0123456789"

TASKS = '''
import trio
from runwire import streams, task

note = streams.input(id="note")
words = streams.define(id="words", type=str)


@task(id="echo")
async def echo(payload):
    return payload


@task(id="talker")
async def talker(payload):
    for word in ["alpha", "beta", "gamma"]:
        await words.append(word)
        await trio.sleep(0.05)
    return "said"


@task(id="listener")
async def listener(payload):
    return (await note.wait(timeout="1h")).unwrap()
'''


async def _cli(*args: str, env: dict[str, str] | None = None,
               ok: bool = True) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "runwire.engine", *args], capture_stdout=True,
            capture_stderr=True, check=False, env={**os.environ, "COLUMNS": "200", **(env or {})})
    if ok:
        assert result.returncode == 0, (result.stdout.decode(), result.stderr.decode())
    return result


@pytest.fixture
async def engine(tmp_path: Path):
    """An engine from ``serve``, configured only by the environment, its tasks a file."""
    tasks_file = tmp_path / "cli_tasks.py"
    tasks_file.write_text(TASKS)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RUNWIRE_STORE": "memory://",
           "RUNWIRE_PORT": "0", "RUNWIRE_API_KEY": KEY, "RUNWIRE_TASKS": str(tasks_file)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "runwire.engine", "serve"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    seen = b""
    try:
        with trio.fail_after(20):
            while b"serving ws://" not in seen or not seen.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, f"engine exited early: {seen.decode()}"
                seen += chunk
        assert b"echo, listener, talker" in seen
        url = re.search(rb"serving (ws://\S+)", seen).group(1).decode()
        yield {"RUNWIRE_URL": url, "RUNWIRE_API_KEY": KEY}
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await proc.wait()


def _json(result: subprocess.CompletedProcess[bytes]):
    return json.loads(result.stdout)


async def test_trigger_list_show_tail(engine):
    done = _json(await _cli("trigger", "echo", "--payload", '{"n": 1}', "--wait", "--json",
                            "--tag", "cli", env=engine))
    assert done["status"] == "COMPLETED" and done["output"] == {"n": 1}
    talk = _json(await _cli("trigger", "talker", "--json", env=engine))["id"]
    tail = (await _cli("runs", "tail", talk, env=engine)).stdout.decode()
    assert re.search(r"words\[0\] alpha.*words\[1\] beta.*words\[2\] gamma", tail, re.S)
    assert "COMPLETED" in tail
    listed = _json(await _cli("runs", "list", "--json", env=engine))
    assert [r["id"] for r in listed["runs"]] == [talk, done["id"]]
    assert [r["id"] for r in _json(await _cli("runs", "list", "--json", "--tag", "cli",
                                              env=engine))["runs"]] == [done["id"]]
    table = (await _cli("runs", "list", "--task", "echo", env=engine)).stdout.decode()
    assert done["id"] in table and "COMPLETED" in table and talk not in table
    page = _json(await _cli("runs", "list", "--json", "--limit", "1", env=engine))
    assert page["cursor"] and [r["id"] for r in page["runs"]] == [talk]
    rest = _json(await _cli("runs", "list", "--json", "--limit", "1", "--cursor",
                            page["cursor"], env=engine))
    assert [r["id"] for r in rest["runs"]] == [done["id"]]
    shown = (await _cli("runs", "show", done["id"], env=engine)).stdout.decode()
    assert '{"n":1}' in shown and "echo" in shown


async def test_send_cancel_and_tokens(engine):
    waiting = _json(await _cli("trigger", "listener", "--json", env=engine))["id"]
    await _cli("send", waiting, "note", '{"hi": true}', env=engine)
    assert _json(await _cli("runs", "show", waiting, "--json", env=engine))["output"] in (
        None, {"hi": True})
    other = _json(await _cli("trigger", "listener", "--json", env=engine))["id"]
    assert "canceled" in (await _cli("runs", "cancel", other, env=engine)).stdout.decode()
    again = await _cli("runs", "cancel", other, env=engine, ok=False)
    assert again.returncode == 1 and b"run_finished" in again.stderr
    made = _json(await _cli("token", "waitpoint", "--timeout", "1h", "--json", env=engine))
    assert (await _cli("token", "complete", made["id"], '"yes"',
                       env={**engine, "RUNWIRE_API_KEY": made["public_access_token"]})
            ).returncode == 0
    second = await _cli("token", "complete", made["id"], '"no"', env=engine)
    assert b"already completed" in second.stdout
    state = _json(await _cli("token", "show", made["id"], "--json", env=engine))
    assert state["status"] == "COMPLETED" and state["output"] == "yes"
    access = (await _cli("token", "create", "--scope", f"read:runs:{waiting}",
                         env=engine)).stdout.decode().strip()
    assert _json(await _cli("runs", "show", waiting, "--json",
                            env={**engine, "RUNWIRE_API_KEY": access}))["id"] == waiting


BAD = [
    (["runs", "show", "run_nope"], 1, "not_found"),
    (["runs", "cancel", "run_nope"], 1, "not_found"),
    (["send", "run_nope", "note", "1"], 1, "not_found"),
    (["trigger", "nope"], 1, "unknown_task"),
    (["trigger", "echo", "--payload", "{bad"], 2, "not valid JSON"),
    (["send", "run_x", "note", "{bad"], 2, "not valid JSON"),
    (["token", "complete", "waitpoint_nope", "1"], 1, "not_found"),
    (["token", "show", "waitpoint_nope"], 1, "not_found"),
    (["token", "create", "--scope", "read:nothing"], 2, "unknown scope"),
    (["runs", "list", "--limit", "0"], 1, "limit"),
    (["runs", "list", "--status", "DONE"], 2, "DONE"),
    (["runs", "list", "--cursor", "garbage"], 1, "cursor"),
    (["token", "waitpoint", "--timeout", "soon"], 2, "timeout"),
]


async def test_bad_input_exits_non_zero_with_a_clear_message(engine, capsys):
    """The same ``main`` as the console script, called in a worker thread (a process per
    case costs a second each); the subprocess tests below cover the process boundary."""
    from runwire.engine._cli import main

    capsys.readouterr()
    for args, code, message in BAD:
        argv = [*args, "--url", engine["RUNWIRE_URL"], "--api-key", KEY]
        with trio.fail_after(30):
            exit_code = await trio.to_thread.run_sync(main, argv)
        err = capsys.readouterr().err
        assert exit_code == code, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err


async def test_a_wrong_key_an_unknown_run_and_an_unreachable_engine(engine):
    unknown = await _cli("runs", "cancel", "run_nope", env=engine, ok=False)
    assert unknown.returncode == 1 and b"not_found" in unknown.stderr
    bad_json = await _cli("send", "run_x", "note", "{bad", env=engine, ok=False)
    assert bad_json.returncode == 2 and b"not valid JSON" in bad_json.stderr
    wrong = await _cli("runs", "list", env={**engine, "RUNWIRE_API_KEY": "wrong-key-123456"},
                       ok=False)
    assert wrong.returncode == 1 and b"unauthorized" in wrong.stderr
    nothing = await _cli("runs", "list", "--url", "ws://127.0.0.1:9", "--connect-timeout", "1",
                         env={"RUNWIRE_API_KEY": KEY}, ok=False)
    assert nothing.returncode == 1 and b"cannot reach the engine" in nothing.stderr
    no_key = await _cli("runs", "list", env={"RUNWIRE_URL": engine["RUNWIRE_URL"],
                                             "RUNWIRE_API_KEY": ""}, ok=False)
    assert no_key.returncode == 2 and b"--api-key" in no_key.stderr
    assert b"Traceback" not in wrong.stderr + nothing.stderr + no_key.stderr
    assert (await _cli("runs", "list", env=engine)).returncode == 0  # nothing broke


def test_serve_help_names_every_environment_variable():
    result = subprocess.run([sys.executable, "-m", "runwire.engine", "serve", "--help"],
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, "COLUMNS": "200"})
    for name in ("TASKS", "STORE", "HOST", "PORT", "API_KEY", "DRAIN_TIMEOUT", "RETENTION",
                 "LOG_LEVEL"):
        assert f"RUNWIRE_{name}" in result.stdout


def test_a_missing_tasks_file_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "runwire.engine", "serve", "--tasks",
                             str(tmp_path / "nope.py"), "--store", "memory://"],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2 and "nope.py" in result.stderr
