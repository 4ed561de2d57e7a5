"""Coverage-guided fuzzing of the codec and the sans-IO protocol, with atheris (libFuzzer).

Run it apart from the test suite (it needs ``pip install atheris``)::

    mkdir -p /tmp/runwire-corpus
    python tests/fuzz/fuzz_codec.py /tmp/runwire-corpus tests/fuzz/seeds -max_total_time=60

libFuzzer writes the inputs it finds interesting into the first directory (keep the checked-in
seeds second, so they stay as they are) and a ``crash-*`` file for any input that breaks a
property below. ``tests/fuzz/test_fuzz_seeds.py`` replays the seeds and every regression
input in ``tests/fuzz/regressions/`` through :func:`check` in the normal suite.

Properties, for any bytes a peer may send:

1. ``decode`` returns a frame or raises ``RemoteProtocolError``, nothing else;
2. a decoded frame encodes again, even wrapped in the few levels an engine frame adds
   (a ``run`` frame carries a payload two levels down), and decodes to an equal frame;
3. the engine's and the client's ``Protocol`` raise only ``RemoteProtocolError`` (never
   anything else), leave their state unchanged when they refuse, and a refusal before
   ``hello`` always carries a close code.
"""

from __future__ import annotations

import sys

import orjson

#: Levels an engine frame may wrap around a value it got from a client (frame, run object,
#: payload), plus a margin.
ENGINE_WRAPPING = 4


def check(data: bytes) -> None:
    """Assert the properties above for one input (raises AssertionError on a finding)."""
    from runwire.transport import Protocol, RemoteProtocolError, Role, State, decode, encode
    from runwire.transport._codec import unstructure

    try:
        frame = decode(data)
    except RemoteProtocolError:
        frame = None
    if frame is not None:
        again = encode(frame)
        assert decode(again) == frame, (data, again)
        wrapped: object = unstructure(frame)
        for _ in range(ENGINE_WRAPPING):
            wrapped = {"run": wrapped}
        orjson.dumps(wrapped)
    for role in (Role.ENGINE, Role.CLIENT):
        for state in ((State.AWAIT_HELLO, State.OPEN) if role is Role.ENGINE
                      else (State.HELLO_SENT, State.OPEN)):
            _check_protocol(Protocol, RemoteProtocolError, role, state, data)


def _check_protocol(protocol_cls, error_cls, role, state, data: bytes) -> None:
    protocol = protocol_cls(role)
    protocol.state = state
    try:
        protocol.receive(data)
    except error_cls as exc:
        assert protocol.state is state
        assert isinstance(exc.code, str) and exc.code
        assert exc.re is None or type(exc.re) is int
        if state.value == "await_hello":
            assert exc.close_code is not None


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["runwire.transport", "cattrs"]):
        import runwire.transport  # noqa: F401  (instrumented for coverage)
    from runwire.transport import _codec

    # cattrs generates the per-frame structure functions at run time: instrument them too
    for kind, structure in _codec._STRUCTURE.items():
        _codec._STRUCTURE[kind] = atheris.instrument_func(structure)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
