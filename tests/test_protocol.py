"""The sans-IO protocol, tested synchronously: bytes in, frames out, and back."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runwire.transport import (
    Ack, CancelRun, Chunks, Error, Hello, LocalProtocolError, Protocol, Read,
    RemoteProtocolError, Retrieve, Role, State, Welcome, encode,
)
from runwire.transport import CLOSE_BAD_PROTOCOL, CLOSE_UNAUTHORIZED
from runwire.transport._protocol import TRANSITIONS

ROOT = Path(__file__).resolve().parent.parent


class Pair:
    """A client and an engine protocol object, with bytes passed between them by hand."""

    def __init__(self) -> None:
        self.client = Protocol(Role.CLIENT)
        self.engine = Protocol(Role.ENGINE)

    def to_engine(self, frame):
        return self.engine.receive(self.client.send(frame))

    def to_client(self, frame):
        return self.client.receive(self.engine.send(frame))

    def open(self) -> Pair:
        assert self.to_engine(Hello(protocol=1, token="k")) == Hello(protocol=1, token="k")
        assert isinstance(self.to_client(Welcome(protocol=1)), Welcome)
        return self


def refused(protocol: Protocol, data: bytes | str) -> RemoteProtocolError:
    before = protocol.state
    with pytest.raises(RemoteProtocolError) as info:
        protocol.receive(data)
    assert protocol.state is before, "a refused message must not move the state"
    return info.value


def test_initial_states():
    pair = Pair()
    assert pair.client.state is State.START
    assert pair.engine.state is State.AWAIT_HELLO


def test_handshake_moves_both_sides_to_open():
    pair = Pair()
    pair.client.send(Hello(protocol=1, token="k"))
    assert pair.client.state is State.HELLO_SENT
    pair.engine.receive(encode(Hello(protocol=1, token="k")))
    assert pair.engine.state is State.HELLO_RECEIVED
    data = pair.engine.send(Welcome(protocol=1))
    assert pair.engine.state is State.OPEN
    pair.client.receive(data)
    assert pair.client.state is State.OPEN


def test_requests_and_answers_flow_once_open():
    pair = Pair().open()
    assert pair.to_engine(Read(id=1, run="r")) == Read(id=1, run="r")
    assert pair.to_client(Chunks(re=1, stream="default", start=0, items=[1])).items == [1]
    assert pair.to_client(Ack(re=1)) == Ack(re=1)
    assert pair.client.state is pair.engine.state is State.OPEN


def test_a_refused_credential_closes_both_sides():
    pair = Pair()
    pair.to_engine(Hello(protocol=1, token="bad"))
    error = Error(re=None, code="unauthorized", message="no")
    assert pair.to_client(error) == error
    assert pair.engine.state is State.CLOSED
    assert pair.client.state is State.CLOSED


def test_the_engine_may_refuse_before_hello():
    engine = Protocol(Role.ENGINE)
    engine.send(Error(re=None, code="unauthorized", message="timeout"))
    assert engine.state is State.CLOSED


def test_hello_must_be_first():
    engine = Protocol(Role.ENGINE)
    err = refused(engine, encode(Read(id=3, run="r")))
    assert (err.code, err.close_code, err.re) == ("unauthorized", CLOSE_UNAUTHORIZED, 3)


@pytest.mark.parametrize("message", [b"not json", b"[]", b'{"type":"nope"}',
                                     b'{"type":"hello","protocol":"1","token":"k"}',
                                     b'{"type":"hello","protocol":1}',
                                     b'{"type":"ack","re":1}', b'{"type":"welcome","protocol":1}'])
def test_garbage_before_hello_is_unauthorized_with_4401(message):
    err = refused(Protocol(Role.ENGINE), message)
    assert (err.code, err.close_code) == ("unauthorized", CLOSE_UNAUTHORIZED)


def test_a_client_cannot_send_a_request_before_hello():
    client = Protocol(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send(Read(id=1, run="r"))
    assert client.state is State.START


def test_the_client_expects_welcome_or_error_after_hello():
    client = Protocol(Role.CLIENT)
    client.send(Hello(protocol=1, token="k"))
    err = refused(client, encode(Ack(re=1)))
    assert err.code == "bad_frame"


@pytest.mark.parametrize("role, frame", [(Role.CLIENT, Welcome(protocol=1)),
                                         (Role.CLIENT, Ack(re=1)),
                                         (Role.ENGINE, Read(id=1, run="r")),
                                         (Role.ENGINE, Hello(protocol=1, token="k"))])
def test_a_side_cannot_send_the_other_sides_frames(role, frame):
    with pytest.raises(LocalProtocolError, match="does not send"):
        Protocol(role).send(frame)


def test_wrong_direction_frames_are_refused_and_the_connection_goes_on():
    pair = Pair().open()
    err = refused(pair.engine, encode(Ack(re=1)))
    assert err.code == "bad_frame" and err.close_code is None
    err = refused(pair.client, encode(Retrieve(id=9, run="r")))
    assert err.code == "bad_frame" and err.re == 9
    assert pair.to_engine(Retrieve(id=2, run="r")).id == 2


def test_a_bad_frame_when_open_is_answered_without_closing():
    pair = Pair().open()
    err = refused(pair.engine, b'{"type":"cancel_run","id":5}')
    assert (err.code, err.re, err.close_code) == ("bad_frame", 5, None)
    assert pair.to_engine(CancelRun(id=5, run="r")) == CancelRun(id=5, run="r")


def test_hello_twice_is_a_bad_frame_but_not_fatal():
    pair = Pair().open()
    err = refused(pair.engine, encode(Hello(protocol=1, token="k")))
    assert (err.code, err.close_code) == ("bad_frame", None)
    err = refused(pair.engine, encode(Hello(protocol=2, token="k")))
    assert (err.code, err.close_code) == ("bad_frame", None)
    assert pair.engine.state is State.OPEN


def test_welcome_twice_is_refused_both_ways():
    pair = Pair().open()
    with pytest.raises(LocalProtocolError):
        pair.engine.send(Welcome(protocol=1))
    assert refused(pair.client, encode(Welcome(protocol=1))).code == "bad_frame"


def test_a_client_cannot_hello_twice():
    pair = Pair().open()
    with pytest.raises(LocalProtocolError):
        pair.client.send(Hello(protocol=1, token="k"))


def test_an_unsupported_hello_version_closes_with_4400():
    err = refused(Protocol(Role.ENGINE), encode(Hello(protocol=2, token="k")))
    assert (err.code, err.close_code) == ("bad_frame", CLOSE_BAD_PROTOCOL)
    assert "version 2" in str(err)


def test_an_unsupported_welcome_version_closes_with_4400():
    client = Protocol(Role.CLIENT)
    client.send(Hello(protocol=1, token="k"))
    err = refused(client, encode(Welcome(protocol=7)))
    assert err.close_code == CLOSE_BAD_PROTOCOL


def test_after_close_everything_is_a_local_error():
    pair = Pair().open()
    pair.engine.close()
    pair.client.close()
    with pytest.raises(LocalProtocolError):
        pair.engine.send(Ack(re=1))
    with pytest.raises(LocalProtocolError):
        pair.engine.receive(encode(Read(id=1, run="r")))
    with pytest.raises(LocalProtocolError):
        pair.client.send(Read(id=1, run="r"))


def test_transitions_are_data_over_states():
    for (state, direction, _frame), nxt in TRANSITIONS.items():
        assert isinstance(state, State) and direction in ("send", "recv")
        assert nxt is None or isinstance(nxt, State)
    targets = {nxt for nxt in TRANSITIONS.values() if nxt is not None}
    assert targets | {State.START, State.AWAIT_HELLO} == set(State)


def test_the_sans_io_modules_do_not_import_trio():
    script = textwrap.dedent("""
        import importlib.util, sys, types

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("trio", "trio_websocket"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Blocker())
        # load the modules without running the packages' __init__ (which import the adapters)
        for name, folder in (("runwire", "sdk"), ("runwire.transport", "transport")):
            pkg = types.ModuleType(name)
            pkg.__path__ = [folder]
            sys.modules[name] = pkg
        import runwire.transport._frames, runwire.transport._codec, runwire.transport._protocol
        from runwire.transport import _protocol
        p = _protocol.Protocol(_protocol.Role.ENGINE)
        p.receive(b'{"type":"hello","protocol":1,"token":"k"}')
        assert not any(m.split(".")[0] in ("trio", "trio_websocket") for m in sys.modules)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
