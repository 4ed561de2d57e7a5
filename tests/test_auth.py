"""Keys and tokens (issue 5): the API key, public access tokens, scopes, expiry, tampering,
the authorization matrix, and secrets kept out of logs and error messages."""

from __future__ import annotations

import base64
import datetime
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jwt
import orjson
import pytest
import trio

import runwire
from runwire.engine import open_engine
from runwire.engine.service import Auth, Grant
from runwire.transport import check_scopes
from runwire import ForbiddenError, OutsideRunError, UnauthorizedError, auth, runs, streams, task

from .helpers import API_KEY
from .rawclient import TRANSPORTS, raw_client, wait_for_connections

ROOT = Path(__file__).resolve().parent.parent

done = streams.input(id="done")
note = streams.input(id="note")
out = streams.define(id="out", type=str)


@task(id="auth-waiter")
async def waiter(payload):
    await out.append("hello")
    (await done.once()).unwrap()
    return "done"


@task(id="auth-other")
async def other(payload):
    (await done.once()).unwrap()
    return "other"


TASKS = [waiter, other]


def tamper(token: str, **claims) -> str:
    """The token with its claims changed and the original signature kept."""
    header, body, signature = token.split(".")
    data = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data.update(claims)
    new_body = base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()
    return f"{header}.{new_body}.{signature}"


def expired_token(scopes: list[str]) -> str:
    """A token for this engine's key that expired an hour ago."""
    return Auth(API_KEY, clock=lambda: time.time() - 7200).create_token(scopes, 3600)


# --- the Auth object ------------------------------------------------------------------------


def test_the_api_key_is_admin():
    grant = Auth(API_KEY).authenticate(API_KEY)
    assert grant.admin and grant.allows("write", "runs", "anything")
    assert API_KEY not in repr(Auth(API_KEY))


def test_a_token_grants_exactly_its_scopes():
    a = Auth(API_KEY)
    grant = a.authenticate(a.run_token("run_a"))
    assert not grant.admin
    assert grant.allows("read", "runs", "run_a")
    assert grant.allows("write", "inputStreams", "run_a")
    assert not grant.allows("read", "runs", "run_b")
    assert not grant.allows("write", "streams", "run_a")
    assert not grant.allows("write", "runs", "run_a")
    assert not grant.allows("trigger", "tasks", "t")


def test_wildcards_and_task_scopes():
    assert Grant(scopes=frozenset({"read:runs:*"})).allows("read", "runs", "x")
    assert Grant(scopes=frozenset({"read:runs"})).allows("read", "runs", "x")
    by_task = Grant(scopes=frozenset({"read:tasks:t"}))
    assert by_task.allows("read", "runs", "x", task_id="t")
    assert not by_task.allows("read", "runs", "x", task_id="u")
    assert not by_task.allows("write", "runs", "x", task_id="t")


@pytest.mark.parametrize("scopes", [[], "read:runs", ["read:bananas"], ["delete:runs:x"],
                                    ["read"], [5], ["x" * 300], ["read:runs:a"] * 65 + ["b"]])
def test_malformed_scopes_are_refused(scopes):
    with pytest.raises(ValueError):
        check_scopes(scopes)


@pytest.mark.parametrize("expires_in", [0, -1, float("inf"), float("nan"), True, "1h"])
def test_a_token_lifetime_must_be_a_positive_number(expires_in):
    with pytest.raises(ValueError):
        Auth(API_KEY).create_token(["read:runs:a"], expires_in)


@pytest.mark.parametrize("credential", [
    "", "garbage", API_KEY + "x", API_KEY[:-1], "a.b.c", "\ud800",
    "eyJhbGciOiJub25lIn0.eyJzY29wZXMiOlsicmVhZDpydW5zIl19.",
])
def test_bad_credentials_are_unauthorized(credential):
    with pytest.raises(UnauthorizedError) as info:
        Auth(API_KEY).authenticate(credential)
    assert credential not in info.value.message or not credential


def test_expired_tampered_and_foreign_tokens_are_unauthorized():
    a = Auth(API_KEY)
    token = a.run_token("run_a")
    with pytest.raises(UnauthorizedError, match="expired"):
        a.authenticate(expired_token(["read:runs:run_a"]))
    with pytest.raises(UnauthorizedError):
        a.authenticate(tamper(token, scopes=["read:runs:*"]))
    with pytest.raises(UnauthorizedError):
        a.authenticate(tamper(token, exp=time.time() + 10**6))
    with pytest.raises(UnauthorizedError):
        a.authenticate(Auth("another-key-123456").run_token("run_a"))
    none_alg = jwt.encode({"iss": "runwire", "exp": time.time() + 60, "scopes": ["read:runs"]},
                          None, algorithm="none")
    with pytest.raises(UnauthorizedError):
        a.authenticate(none_alg)


def test_expiry_follows_the_auth_clock():
    now = [1000.0]
    a = Auth(API_KEY, clock=lambda: now[0])
    grant = a.authenticate(a.create_token(["read:runs:x"], 60))
    assert grant.expires_at == pytest.approx(1060.0)
    assert not grant.expired(1059.0) and grant.expired(1060.0)
    token = a.create_token(["read:runs:x"], 60)
    now[0] = 1061.0
    with pytest.raises(UnauthorizedError, match="expired"):
        a.authenticate(token)


def test_a_verified_token_is_remembered_but_its_expiry_still_checked(monkeypatch):
    from runwire.engine.service import _auth

    now = [1000.0]
    a = Auth(API_KEY, clock=lambda: now[0])
    token = a.create_token(["read:runs:x"], 60)
    decodes = []
    decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *args, **kw: decodes.append(1) or decode(
        *args, **kw))
    first = a.authenticate(token)
    assert a.authenticate(token) is first and len(decodes) == 1  # verified once
    with pytest.raises(UnauthorizedError):  # a tampered token is another string: verified
        a.authenticate(tamper(token, scopes=["read:runs:*"]))
    now[0] = 1060.0
    with pytest.raises(UnauthorizedError, match="expired"):
        a.authenticate(token)
    monkeypatch.setattr(_auth, "VERIFIED_TOKENS", 3)
    tokens = [a.create_token([f"read:runs:r{i}"], 60) for i in range(5)]
    for t in tokens:
        a.authenticate(t)
    assert len(a._verified) <= 3 and tokens[-1] in a._verified  # bounded, oldest out


# --- tokens over a live engine ----------------------------------------------------------


async def test_the_trigger_handle_carries_a_token_for_that_run_only():
    with trio.fail_after(10):
        async with open_engine(TASKS, api_key=API_KEY) as eng:
            async with eng.connect():
                a = await waiter.trigger({})
                b = await other.trigger({})
            async with eng.connect(a.public_access_token):
                async for chunk in await out.read(a.id, timeout_in_seconds=5):
                    assert chunk == "hello"
                    break
                assert (await runs.retrieve(a.id)).id == a.id
                await note.send(a.id, {"hi": 1})
                for call in (lambda: runs.retrieve(b.id), lambda: note.send(b.id, 1),
                             lambda: waiter.trigger({}), lambda: runs.cancel(a.id),
                             lambda: auth.create_public_token(scopes=["read:runs"])):
                    with pytest.raises(ForbiddenError):
                        await call()
            async with eng.connect():
                await done.send(a.id, 1)
                await done.send(b.id, 1)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_create_public_token_with_the_sdk(kind):
    with trio.fail_after(10):
        async with open_engine(TASKS, api_key=API_KEY, port=0) as eng:
            async with eng.connect():
                a = await waiter.trigger({})
                token = await auth.create_public_token(
                    scopes={"read": {"runs": [a.id]}, "trigger": {"tasks": "auth-other"}},
                    expiration="1h")
                grant = eng.auth.authenticate(token)
                assert grant.scopes == {f"read:runs:{a.id}", "trigger:tasks:auth-other"}
                assert grant.expires_at == pytest.approx(time.time() + 3600, abs=5)
            connect = (eng.connect(token) if kind == "memory"
                       else runwire.connect(eng.url, access_token=token))
            async with connect:
                assert (await runs.retrieve(a.id)).status.value in ("EXECUTING", "QUEUED")
                b = await other.trigger({})
                with pytest.raises(ForbiddenError):
                    await runs.retrieve(b.id)  # may trigger it, may not read it
                with pytest.raises(ForbiddenError):
                    await waiter.trigger({})
            async with eng.connect():
                await done.send(a.id, 1)
                await done.send(b.id, 1)


async def test_create_public_token_arguments():
    with trio.fail_after(10):
        async with open_engine(TASKS, api_key=API_KEY) as eng:
            async with eng.connect():
                for expiration, seconds in ((90, 90), ("2h", 7200),
                                            (datetime.timedelta(minutes=5), 300)):
                    token = await auth.create_public_token(scopes=["read:runs:*"],
                                                           expiration=expiration)
                    expires = eng.auth.authenticate(token).expires_at
                    assert expires == pytest.approx(time.time() + seconds, abs=5)
                token = await auth.create_public_token(scopes=["read:runs:x"])
                expires = eng.auth.authenticate(token).expires_at
                assert expires == pytest.approx(time.time() + 900, abs=5)  # 15 min default
                for bad in ([], "read:runs:x", ["nope"], {"read": "runs"}):
                    with pytest.raises(ValueError):
                        await auth.create_public_token(scopes=bad)
                for bad in (0, -5, "soon", "1y"):
                    with pytest.raises(ValueError):
                        await auth.create_public_token(scopes=["read:runs"], expiration=bad)
                with pytest.raises(runwire.BadFrameError, match="expires_in"):
                    await auth.create_public_token(scopes=["read:runs"], expiration="365d")


async def test_create_public_token_needs_a_client():
    with pytest.raises(OutsideRunError):
        await auth.create_public_token(scopes=["read:runs"])


async def _read_token(eng, run_id: str, seconds: float) -> str:
    """A public token that may read ``run_id`` for ``seconds``, made with the API key."""
    async with eng.connect():
        return await auth.create_public_token(scopes=[f"read:runs:{run_id}"],
                                              expiration=seconds)


async def test_a_token_expiring_mid_connection_is_refused_per_request(autojump_clock):
    with trio.fail_after(7200):
        async with open_engine(TASKS, api_key=API_KEY) as eng:
            async with eng.connect():
                a = await waiter.trigger({})
            token = await _read_token(eng, a.id, 60)
            async with eng.connect(token):
                await runs.retrieve(a.id)
                await trio.sleep(61)
                with pytest.raises(UnauthorizedError, match="expired"):
                    await runs.retrieve(a.id)
                # asking for a token with an expired one is unauthorized, not forbidden
                with pytest.raises(UnauthorizedError, match="expired"):
                    await auth.create_public_token(scopes=["read:runs"])
            with pytest.raises(UnauthorizedError, match="expired"):
                async with eng.connect(token):
                    pass
            async with eng.connect():
                await done.send(a.id, 1)


async def test_an_open_read_and_subscription_end_when_their_token_expires(autojump_clock):
    with trio.fail_after(7200):
        async with open_engine(TASKS, api_key=API_KEY) as eng:
            async with eng.connect():
                a = await waiter.trigger({})
            token = await _read_token(eng, a.id, 60)
            async with eng.connect(token):
                started = trio.current_time()
                with pytest.raises(UnauthorizedError, match="expired"):
                    async for _ in await streams.read(a.id, "never", timeout_in_seconds=None):
                        pass
                assert 59.9 <= trio.current_time() - started < 61  # exp is kept to 1 ms
            token = await _read_token(eng, a.id, 30)
            async with eng.connect(token):
                started = trio.current_time()
                with pytest.raises(UnauthorizedError, match="expired"):
                    async for _ in runs.subscribe_to_run(a.id):
                        pass
                assert 29.9 <= trio.current_time() - started < 31
            async with eng.connect():
                await done.send(a.id, 1)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_bad_credentials_close_with_4401(kind):
    with trio.fail_after(10):
        async with open_engine(TASKS, api_key=API_KEY, port=0) as eng:
            good = eng.auth.run_token("run_x")
            for credential in ("", "wrong-key-123", tamper(good, scopes=["read:runs"]),
                               expired_token(["read:runs"])):
                async with raw_client(eng, kind) as client:
                    answer = await client.hello(credential)
                    assert (answer["type"], answer["code"], answer["re"]) == (
                        "error", "unauthorized", None)
                    assert await client.closed_with() == 4401
            await wait_for_connections(eng, 0)
            with pytest.raises(UnauthorizedError):
                async with eng.connect("wrong-key-123"):
                    pass


# --- the authorization matrix ---------------------------------------------------------------

FRAME_TYPES = ["hello", "read", "append", "send", "trigger", "subscribe", "retrieve",
               "cancel_run", "cancel", "create_token", "list_runs", "create_waitpoint",
               "complete_waitpoint", "retrieve_waitpoint"]
CREDENTIALS = ["none", "garbage", "api-key", "this-run", "other-run", "expired", "tampered"]
ALLOWED = {  # frame type -> what the API key gets; "-" means no answer at all
    "hello": "error:bad_frame", "read": "end", "append": "ack", "send": "ack",
    "trigger": "triggered", "subscribe": "run", "retrieve": "run", "cancel_run": "ack",
    "cancel": "end", "create_token": "token", "list_runs": "runs",
    "create_waitpoint": "waitpoint", "complete_waitpoint": "error:not_found",
    "retrieve_waitpoint": "error:not_found",
}
THIS_RUN = {  # what trigger's own token gets: read that run, send to it, nothing else
    **{k: "error:forbidden" for k in ("append", "trigger", "cancel_run", "create_token",
                                      "list_runs", "create_waitpoint", "complete_waitpoint",
                                      "retrieve_waitpoint")},
    "hello": "error:bad_frame", "read": "end", "send": "ack", "subscribe": "run",
    "retrieve": "run", "cancel": "end",
}
OTHER_RUN = {k: "error:forbidden" for k in FRAME_TYPES} | {"hello": "error:bad_frame",
                                                          "cancel": "-"}
EXPECTED = {"api-key": ALLOWED, "this-run": THIS_RUN, "other-run": OTHER_RUN}


def request(kind: str, run: str) -> dict:
    return {
        "hello": {"type": "hello", "protocol": 1, "token": API_KEY},
        "read": {"type": "read", "id": 1, "run": run, "stream": "nothing", "timeout_s": 1},
        "append": {"type": "append", "id": 1, "run": run, "stream": "s", "producer": "p",
                   "seq": 0, "items": [1]},
        "send": {"type": "send", "id": 1, "run": run, "stream": "note", "data": 1},
        "trigger": {"type": "trigger", "id": 1, "task": "auth-waiter"},
        "subscribe": {"type": "subscribe", "id": 1, "run": run},
        "retrieve": {"type": "retrieve", "id": 1, "run": run},
        "cancel_run": {"type": "cancel_run", "id": 1, "run": run},
        "cancel": {"type": "cancel", "id": 1},
        "create_token": {"type": "create_token", "id": 1, "scopes": ["read:runs"]},
        "list_runs": {"type": "list_runs", "id": 1},
        "create_waitpoint": {"type": "create_waitpoint", "id": 1, "timeout_s": 60},
        "complete_waitpoint": {"type": "complete_waitpoint", "id": 1,
                               "waitpoint": "waitpoint_unknown", "data": 1},
        "retrieve_waitpoint": {"type": "retrieve_waitpoint", "id": 1,
                               "waitpoint": "waitpoint_unknown"},
    }[kind]


async def answer_to(client, kind: str, run: str) -> str:
    """Send one frame of ``kind`` about ``run``; what came back, as 'type' or 'error:code'."""
    if kind == "cancel":  # cancel an open read: its end says the cancel worked
        await client.send({"type": "read", "id": 1, "run": run, "timeout_s": None})
        await answers(client)  # (a forbidden read is answered; the cancel has nothing to stop)
    await client.send(request(kind, run))
    rid = None if kind == "hello" else 1
    for frame in await answers(client):
        if frame.get("re") == rid:
            return f"error:{frame['code']}" if frame["type"] == "error" else frame["type"]
    return "-"


async def answers(client) -> list[dict]:
    """Every frame until the engine has been idle for a while (mock time: no waiting)."""
    frames = []
    with trio.move_on_after(5):
        while True:
            frames.append(await client.recv())
    return frames


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("kind", FRAME_TYPES)
async def test_authorization_matrix(autojump_clock, kind, credential):
    with trio.fail_after(60):
        async with open_engine(TASKS, api_key=API_KEY) as eng:
            async with raw_client(eng, "memory", API_KEY) as admin:
                a = await admin.ask({"type": "trigger", "id": 1, "task": "auth-waiter"})
                b = await admin.ask({"type": "trigger", "id": 2, "task": "auth-waiter"})
                token = {
                    "none": "", "garbage": "garbage-credential", "api-key": API_KEY,
                    "this-run": a["token"], "other-run": b["token"],
                    "expired": expired_token([f"read:runs:{a['run']}"]),
                    "tampered": tamper(a["token"], scopes=["read:runs:*", "trigger:tasks"]),
                }[credential]
                async with raw_client(eng, "memory") as client:
                    welcome = await client.hello(token)
                    if credential not in EXPECTED:
                        assert (welcome["type"], welcome["code"]) == ("error", "unauthorized")
                        await client.send(request(kind, a["run"]))
                        assert await client.closed_with() == 4401
                        return
                    assert welcome["type"] == "welcome"
                    got = await answer_to(client, kind, a["run"])
                    assert got == EXPECTED[credential][kind]
                for run in (a, b):
                    await admin.ask({"type": "send", "id": 3, "run": run["run"],
                                     "stream": "done", "data": 1})


async def test_every_client_frame_is_in_the_matrix():
    from runwire.transport import CLIENT_FRAMES

    assert {cls.type for cls in CLIENT_FRAMES} == set(FRAME_TYPES)


# --- secrets stay secret ----------------------------------------------------------------


async def test_secrets_never_reach_logs_or_error_messages(caplog):
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    secrets: list[str] = [API_KEY]
    with trio.fail_after(20):
        async with open_engine(TASKS, api_key=API_KEY, port=0) as eng:
            async with eng.connect():
                a = await waiter.trigger({})
                b = await other.trigger({})
                made = await auth.create_public_token(scopes=[f"read:runs:{a.id}"])
            secrets += [a.public_access_token, b.public_access_token, made]
            bad = [tamper(made, scopes=["read:runs:*"]), expired_token(["read:runs:*"]),
                   API_KEY + "0", API_KEY[:-2], made[:-3]]
            secrets += bad
            for kind in TRANSPORTS:
                for credential in bad:
                    async with raw_client(eng, kind) as client:
                        messages.append((await client.hello(credential))["message"])
                async with raw_client(eng, kind, b.public_access_token) as client:
                    for frame in (request(k, a.id) for k in FRAME_TYPES):
                        await client.send(frame)
                    await client.send({"type": "hello", "protocol": 1, "token": API_KEY})
                    await client.send({"type": "nope", "id": 5, "token": API_KEY})
                    await client.send('{"type":"read","id":6,"run":"%s' % API_KEY)
                    await client.send({"type": "retrieve", "id": 7, "run": "run_done"})
                    while (frame := await client.recv()).get("re") != 7:
                        if frame["type"] == "error":
                            messages.append(frame["message"])
            for credential in bad:
                with pytest.raises(UnauthorizedError) as info:
                    async with runwire.connect(eng.url, access_token=credential,
                                           reconnect_timeout=1):
                        pass
                messages.append(str(info.value))
            async with eng.connect():
                await done.send(a.id, 1)
                await done.send(b.id, 1)
    logged = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert len(messages) > 20
    for text in messages + logged:
        for secret in secrets:
            assert secret not in text
        assert "rw_sk_" not in text and "eyJ" not in text


# --- the CLI: --api-key, RUNWIRE_API_KEY, or a generated key shown once ----------------------


def serve(*args: str, env_key: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RUNWIRE_API_KEY"}
    if env_key is not None:
        env["RUNWIRE_API_KEY"] = env_key
    return subprocess.Popen(
        [sys.executable, "-m", "runwire.engine", "serve", "--store", "memory://", "--port", "0", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def until_serving(proc: subprocess.Popen) -> tuple[str, list[str]]:
    """Lines printed until the engine says where it serves; and that URL."""
    lines: list[str] = []
    with trio.fail_after(20):
        while not lines or "serving" not in lines[-1]:
            lines.append(await trio.to_thread.run_sync(proc.stdout.readline))
            assert lines[-1], "the engine exited: " + "".join(lines)
    return lines[-1].split()[3], lines


async def stop(proc: subprocess.Popen) -> str:
    """Interrupt the engine; the rest of what it printed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    rest, _ = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=20))
    return rest


async def can_connect(url: str, key: str) -> bool:
    try:
        async with runwire.connect(url, api_key=key, reconnect_timeout=1):
            return True
    except UnauthorizedError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "environment"])
async def test_cli_takes_the_key_from_the_flag_or_the_environment(how):
    key, decoy = "cli-key-given-123456", "cli-key-decoy-123456"
    with trio.fail_after(60):
        proc = (serve("--api-key", key, env_key=decoy) if how == "flag"
                else serve(env_key=key))
        lines: list[str] = []
        try:
            url, lines = await until_serving(proc)
            assert await can_connect(url, key)
            assert not await can_connect(url, decoy)
        finally:
            lines.append(await stop(proc))
        assert proc.returncode == 0
        assert not any(key in line for line in lines)  # a given key is never printed


@pytest.mark.slow
async def test_cli_generates_a_key_and_shows_it_once():
    with trio.fail_after(60):
        proc = serve()
        try:
            url, lines = await until_serving(proc)
            shown = [line for line in lines if "generated API key" in line]
            assert len(shown) == 1
            generated = shown[0].split()[-1]
            assert await can_connect(url, generated)
        finally:
            rest = await stop(proc)
        assert sum(line.count(generated) for line in lines) == 1
        assert generated not in rest


async def test_the_expiry_sent_with_a_token_is_the_one_signed_into_it(autojump_clock):
    async with open_engine(TASKS, api_key=API_KEY) as eng:
        await trio.sleep(1234.5678)  # a clock that is not a whole number of seconds
        token, expires_at = eng.issue_token(["read:runs:x"], 60.25)
        assert eng.auth.authenticate(token).expires_at == expires_at
