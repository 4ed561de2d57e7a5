"""Bad frames thrown at a live engine, in memory and over a real websocket.

Each is answered with an ``error`` frame (the right code, and the right ``re`` when the frame
had a usable id) and the same connection keeps working: the next valid request succeeds.
"""

from __future__ import annotations

import attrs
import pytest
import trio

import runwire
from runwire.engine import Limits, open_engine
from runwire import InvalidPayloadError, schema_task, streams, task
from runwire.transport import PROTOCOL_VERSION

from .helpers import API_KEY
from .rawclient import raw_client, wait_for_connections

done = streams.input(id="done")


@task(id="bf-echo")
async def echo(payload):
    return payload


@task(id="bf-waiter")
async def waiter(payload):
    (await done.once()).unwrap()
    return "done"


@attrs.frozen
class Line:
    sku: str
    qty: int


@attrs.frozen
class Order:
    customer: str
    lines: list[Line]


@schema_task(id="bf-order", schema=Order)
async def order(payload: Order):
    return sum(line.qty for line in payload.lines)


async def still_works(client, rid: int = 1000) -> None:
    """A valid request on the same connection succeeds."""
    answer = await client.ask({"type": "trigger", "id": rid, "task": "bf-echo", "payload": 1})
    assert answer["type"] == "triggered" and answer["re"] == rid, answer


async def expect_error(client, message, code: str, re: int | None) -> dict:
    answer = await client.ask(message)
    assert answer["type"] == "error", answer
    assert (answer["code"], answer["re"]) == (code, re), answer
    assert answer["message"]
    await still_works(client)
    return answer


BAD = [
    pytest.param("{not json", None, id="not-json"),
    pytest.param("", None, id="empty"),
    pytest.param("[1, 2]", None, id="array"),
    pytest.param('"hello"', None, id="string"),
    pytest.param({"type": "explode", "id": 7}, 7, id="unknown-type"),
    pytest.param({"id": 8, "run": "r"}, 8, id="no-type"),
    pytest.param({"type": 5, "id": 9}, 9, id="type-not-string"),
    pytest.param({"type": "retrieve", "id": 10}, 10, id="missing-run"),
    pytest.param({"type": "send", "id": 11, "run": "r", "stream": "k"}, 11, id="missing-data"),
    pytest.param({"type": "read", "id": 12, "run": 5}, 12, id="run-not-string"),
    pytest.param({"type": "read", "id": 13, "run": "r", "from": "5"}, 13, id="from-string"),
    pytest.param({"type": "read", "id": 14, "run": "r", "from": True}, 14, id="from-bool"),
    pytest.param({"type": "read", "id": 15, "run": "r", "from": 1.5}, 15, id="from-float"),
    pytest.param({"type": "trigger", "id": 16, "task": "t", "options": []}, 16,
                 id="options-array"),
    pytest.param({"type": "append", "id": 17, "run": "r", "stream": "k", "producer": "p",
                  "seq": 0, "items": "abc"}, 17, id="items-string"),
    pytest.param({"type": "create_token", "id": 18, "scopes": "read:runs"}, 18,
                 id="scopes-string"),
    pytest.param({"type": "read", "id": "19", "run": "r"}, None, id="id-string"),
    pytest.param({"type": "cancel", "id": None}, None, id="id-null"),
    pytest.param({"type": "welcome", "protocol": PROTOCOL_VERSION}, None, id="engine-frame"),
    pytest.param({"type": "ack", "re": 1, "id": 20}, None, id="engine-frame-with-id"),
    pytest.param({"type": "hello", "protocol": PROTOCOL_VERSION, "token": API_KEY}, None,
                 id="hello-twice"),
    pytest.param('{"type":"send","id":21,"run":"r","stream":"k","data":%s%s}'
                 % ("[" * 300, "]" * 300), 21, id="too-deep"),
]


@pytest.mark.parametrize("message, re", BAD)
async def test_a_bad_frame_is_answered_and_the_connection_goes_on(transport, message, re):
    with trio.fail_after(10):
        async with open_engine([echo, waiter, order], api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, transport, API_KEY) as client:
                await expect_error(client, message, "bad_frame", re)
                await expect_error(client, message, "bad_frame", re)  # and again


@pytest.mark.parametrize("message, code", [
    ({"type": "read", "id": 30, "run": "r", "from": -1}, "bad_frame"),
    ({"type": "read", "id": 31, "run": "r", "timeout_s": 0}, "bad_frame"),
    ({"type": "retrieve", "id": 32, "run": "run_nope"}, "not_found"),
    ({"type": "trigger", "id": 33, "task": "nope"}, "unknown_task"),
    ({"type": "trigger", "id": 34, "task": "bf-echo", "options": {"nope": 1}}, "invalid_payload"),
    ({"type": "create_token", "id": 35, "scopes": ["read:bananas"]}, "bad_frame"),
    ({"type": "create_token", "id": 36, "scopes": ["read:runs"], "expires_in": -1}, "bad_frame"),
])
async def test_a_bad_request_is_answered_with_its_code(transport, message, code):
    with trio.fail_after(10):
        async with open_engine([echo, waiter, order], api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, transport, API_KEY) as client:
                await expect_error(client, message, code, message["id"])


async def test_a_duplicate_request_id_is_refused_and_the_first_goes_on(transport):
    with trio.fail_after(10):
        async with open_engine([echo, waiter, order], api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, transport, API_KEY) as client:
                run = (await client.ask({"type": "trigger", "id": 1, "task": "bf-waiter"}))["run"]
                read = {"type": "read", "id": 2, "run": run, "timeout_s": None}
                await client.send(read)
                await expect_error(client, read, "bad_frame", 2)
                # the first read is still open: it ends when the run ends
                sent = await client.ask({"type": "send", "id": 3, "run": run, "stream": "done",
                                         "data": 1})
                assert sent["type"] == "ack"
                answer = await client.recv()
                assert answer == {"type": "end", "re": 2, "reason": "complete", "next": 0}
                # once over, the id may be used again
                again = await client.ask({"type": "retrieve", "id": 2, "run": run})
                assert again["type"] == "run" and again["re"] == 2


async def test_cancel_of_an_unknown_request_is_ignored(transport):
    with trio.fail_after(10):
        async with open_engine([echo], api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, transport, API_KEY) as client:
                await client.send({"type": "cancel", "id": 12345})
                await still_works(client)


async def test_a_binary_message_closes_with_1003_and_others_go_on(transport):
    with trio.fail_after(10):
        async with open_engine([echo], api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, transport, API_KEY) as bystander:
                async with raw_client(eng, transport, API_KEY) as client:
                    await client.send(b'{"type":"cancel","id":1}')
                    answer = await client.recv()
                    assert (answer["type"], answer["code"]) == ("error", "bad_frame")
                    assert await client.closed_with() == 1003
                await wait_for_connections(eng, 1)
                await still_works(bystander)


async def test_a_message_over_the_limit_closes_with_1009_and_others_go_on():
    limit = 64 * 1024
    with trio.fail_after(10):
        async with open_engine([echo], api_key=API_KEY, port=0,
                               limits=Limits(max_message_bytes=limit)) as eng:
            async with raw_client(eng, "ws", API_KEY) as bystander:
                async with raw_client(eng, "ws", API_KEY) as client:
                    big = {"type": "trigger", "id": 1, "task": "bf-echo", "payload": "x" * limit}
                    await client.send(big)
                    assert await client.closed_with() == 1009
                await wait_for_connections(eng, 1)
                await still_works(bystander)
                # just under the limit is fine
                fits = {"type": "trigger", "id": 2, "task": "bf-echo",
                        "payload": "x" * (limit - 100)}
                assert (await bystander.ask(fits))["type"] == "triggered"


async def test_the_welcome_announces_the_message_limit(transport):
    with trio.fail_after(10):
        async with open_engine([echo], api_key=API_KEY, port=0,
                               limits=Limits(max_message_bytes=12345)) as eng:
            async with raw_client(eng, transport) as client:
                welcome = await client.hello(API_KEY)
                assert welcome == {"type": "welcome", "protocol": PROTOCOL_VERSION,
                                   "engine": "runwire", "max_message": 12345}


async def test_a_bad_hello_version_closes_with_4400(transport):
    with trio.fail_after(10):
        async with open_engine([echo], api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, transport) as client:
                answer = await client.ask({"type": "hello", "protocol": PROTOCOL_VERSION + 1,
                                           "token": API_KEY})
                assert (answer["type"], answer["code"]) == ("error", "bad_frame")
                assert await client.closed_with() == 4400
            await wait_for_connections(eng, 0)


# --- schema_task payloads (issue 7) ---------------------------------------------------------

BAD_ORDERS = [
    ({"customer": "c", "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "two"}]},
     "payload.lines[1].qty"),
    ({"lines": []}, "payload.customer"),
    ({"customer": "c", "lines": [{"qty": 1}]}, "payload.lines[0].sku"),
    ({"customer": "c", "lines": {"sku": "a"}}, "payload.lines"),
    ("not an object", "payload"),
]


@pytest.mark.parametrize("payload, path", BAD_ORDERS)
async def test_an_invalid_schema_payload_names_the_field_for_the_sdk(payload, path):
    with trio.fail_after(10):
        async with open_engine([order], api_key=API_KEY) as eng:
            async with eng.connect():
                with pytest.raises(InvalidPayloadError) as info:
                    await order.trigger(payload)
                assert info.value.code == "invalid_payload"
                assert path in str(info.value)
                good = {"customer": "c", "lines": [{"sku": "a", "qty": 2}]}
                assert (await order.trigger_and_wait(good)).output == 2
                assert (await order.trigger_and_wait(Order("c", [Line("b", 3)]))).output == 3


@pytest.mark.parametrize("payload, path", BAD_ORDERS)
async def test_an_invalid_schema_payload_names_the_field_for_raw_clients(transport, payload, path):
    with trio.fail_after(10):
        async with open_engine([echo, order], api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, transport, API_KEY) as client:
                answer = await expect_error(
                    client, {"type": "trigger", "id": 41, "task": "bf-order", "payload": payload},
                    "invalid_payload", 41)
                assert path in answer["message"]


async def test_an_invalid_schema_payload_over_the_sdk_websocket():
    with trio.fail_after(10):
        async with open_engine([order], api_key=API_KEY, port=0) as eng:
            async with runwire.connect(eng.url, api_key=API_KEY):
                with pytest.raises(InvalidPayloadError, match=r"payload\.lines\[0\]\.qty"):
                    await order.trigger({"customer": "c", "lines": [{"sku": "a", "qty": None}]})


# --- nesting: what the engine accepts it can store and send on ------------------------------


async def test_deep_data_is_refused_at_the_edge_and_the_run_lives_on(transport):
    from runwire.transport._codec import MAX_DEPTH

    with trio.fail_after(10):
        async with open_engine([echo, waiter], api_key=API_KEY, port=0) as eng:
            async with raw_client(eng, transport, API_KEY) as client:
                run = (await client.ask({"type": "trigger", "id": 1, "task": "bf-waiter"}))["run"]

                def send(rid: int, depth: int) -> str:  # data nested so the frame has depth
                    inner = depth - 1
                    return ('{"type":"send","id":%d,"run":"%s","stream":"in","data":%s%s}'
                            % (rid, run, "[" * inner, "]" * inner))

                # once accepted by the codec before the fix, this crashed the run (CRASHED)
                # when its actor stored the record: orjson writes at most 254 levels
                await expect_error(client, send(2, 300), "bad_frame", 2)
                assert (await client.ask(send(3, MAX_DEPTH)))["type"] == "ack"
                sub = await client.ask({"type": "retrieve", "id": 4, "run": run})
                assert sub["run"]["status"] == "EXECUTING"
                await client.ask({"type": "send", "id": 5, "run": run, "stream": "done",
                                  "data": 1})
                assert (await eng.wait_finished(run)).status.value == "COMPLETED"
