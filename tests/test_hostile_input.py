"""Hostile input gets a Matrix error, never a 500 or a plain-text body; event content stays canonical JSON.

Over HTTP against the running app on both backends: deeply nested JSON, lone surrogates, numbers
canonical JSON forbids, filter IDs beyond 64 bits, request lines and headers aiohttp refuses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from bench.servers import free_port
from homeserver.sync import typing_state
from homeserver.events.crypto import compute_event_id, sign_event
from homeserver.json_input import MAX_JSON_DEPTH, MAX_SAFE_INTEGER
from homeserver.events.room_versions import ROOM_V10
from tests.rooms_helpers import V3, User
from tests.test_federation_forged import Peer
from tests.test_federation_whispr import federation_config


async def _matrix_error(resp: Any, status: int, errcode: str) -> None:
    assert resp.status == status, (resp.status, await resp.text())
    assert resp.content_type == "application/json", resp.content_type
    assert (await resp.json())["errcode"] == errcode


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# ---- item 6: bodies no parser should choke on -------------------------------------------------

async def test_deeply_nested_json_is_m_bad_json(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    send = f"{V3}/rooms/{room}/send/m.room.message/deep"
    for body in (b"[" * 100_000, b'{"msgtype": "m.text", "body": "x", "n": ' + _nested(MAX_JSON_DEPTH) + b"}"):
        await _matrix_error(await client.put(send, data=body, headers=alice.h), 400, "M_BAD_JSON")
        await _matrix_error(await client.post(f"{V3}/login", data=body), 400, "M_BAD_JSON")
    # Nesting up to the bound is fine.
    ok = b'{"msgtype": "m.text", "body": "x", "n": ' + _nested(MAX_JSON_DEPTH - 2) + b"}"
    assert (await client.put(send, data=ok, headers=alice.h)).status == 200


async def test_lone_surrogate_in_content_is_m_bad_json(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    for i, text in enumerate((rb"\ud800", rb"a\udfffb", rb"\ud83d")):
        resp = await client.put(f"{V3}/rooms/{room}/send/m.room.message/s{i}", headers=alice.h,
                                data=b'{"msgtype": "m.text", "body": "' + text + b'"}')
        await _matrix_error(resp, 400, "M_BAD_JSON")
    # A real surrogate pair is one character, and fine.
    resp = await client.put(f"{V3}/rooms/{room}/send/m.room.message/pair", headers=alice.h,
                            data=rb'{"msgtype": "m.text", "body": "\ud83d\ude00"}')
    assert resp.status == 200
    event = await alice.call("GET", f"/rooms/{room}/event/{(await resp.json())['event_id']}")
    assert event["content"]["body"] == "\U0001F600"


async def test_huge_filter_ids_are_not_found(client: Any) -> None:
    alice = await User.new(client, "alice")
    for filter_id in ("12345678901234567890", "9" * 40, "9223372036854775808", "\u00b2"):
        await _matrix_error(await client.get(f"{V3}/user/{alice.user_id}/filter/{filter_id}", headers=alice.h),
                            404, "M_NOT_FOUND")
        await _matrix_error(await client.get(f"{V3}/sync", params={"filter": filter_id}, headers=alice.h),
                            404, "M_NOT_FOUND")


async def test_nested_inline_filters_are_m_bad_json(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    deep = "[" * 2000  # 6,000 bytes once percent-encoded: within aiohttp's request-line limit
    await _matrix_error(await client.get(f"{V3}/sync", params={"filter": "{" + '"a":' + deep}, headers=alice.h),
                        400, "M_BAD_JSON")
    await _matrix_error(await client.get(f"{V3}/rooms/{room}/messages", params={"filter": deep, "dir": "b"},
                                         headers=alice.h), 400, "M_BAD_JSON")


async def test_long_request_line_and_header_are_matrix_errors(client: Any) -> None:
    resp = await client.get(f"{V3}/profile/" + "a" * 9000)
    await _matrix_error(resp, 414, "M_TOO_LARGE")
    resp = await client.get(f"{V3}/versions", headers={"X-Big": "b" * 9000})
    await _matrix_error(resp, 431, "M_TOO_LARGE")
    # The server still answers afterwards.
    assert (await client.get("/_matrix/client/versions")).status == 200


async def test_malformed_http_is_a_matrix_error(client: Any) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    await writer.drain()
    head, _, body = (await asyncio.wait_for(reader.read(), 10)).partition(b"\r\n\r\n")
    writer.close()
    assert head.split(b" ", 2)[1] == b"400", head
    assert b"application/json" in head and b'"errcode"' in body, (head, body)


# ---- item 7: canonical JSON's numbers ----------------------------------------------------------

async def test_event_content_outside_canonical_json_is_m_bad_json(client: Any) -> None:
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    for i, number in enumerate((str(MAX_SAFE_INTEGER + 1), str(-MAX_SAFE_INTEGER - 1), "1.5", "1e3", "1e400")):
        body = b'{"msgtype": "m.text", "body": "x", "n": ' + number.encode() + b"}"
        await _matrix_error(await client.put(f"{V3}/rooms/{room}/send/m.room.message/n{i}", data=body,
                                             headers=alice.h), 400, "M_BAD_JSON")
        await _matrix_error(await client.put(f"{V3}/rooms/{room}/state/m.custom/k{i}", data=b'{"n": [' +
                                             number.encode() + b"]}", headers=alice.h), 400, "M_BAD_JSON")
    await _matrix_error(await client.post(f"{V3}/createRoom", json={"power_level_content_override": {"ban": 0.5}},
                                          headers=alice.h), 400, "M_BAD_JSON")
    # The edges of the range are canonical.
    event_id = await alice.call("PUT", f"/rooms/{room}/send/m.room.message/edge", data=(
        f'{{"msgtype": "m.text", "body": "x", "n": [{MAX_SAFE_INTEGER}, {-MAX_SAFE_INTEGER}]}}'))
    event = await alice.call("GET", f"/rooms/{room}/event/{event_id['event_id']}")
    assert event["content"]["n"] == [MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]
    timeline = await alice.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"})
    assert not [e for e in timeline["chunk"] if e["type"] == "m.custom"]


# ---- item 16: the access log -------------------------------------------------------------------

async def test_access_log_names_the_user_and_hides_tokens(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    alice = await User.new(client, "alice")
    with caplog.at_level(logging.INFO, logger="whispr.access"):
        resp = await client.get(f"{V3}/account/whoami", params={"access_token": alice.token, "x": "1"})
        assert resp.status == 200
        await _matrix_error(await client.get(f"{V3}/profile/" + "a" * 9000), 414, "M_TOO_LARGE")
    lines = [r.getMessage() for r in caplog.records if r.name == "whispr.access"]
    whoami = [line for line in lines if "/account/whoami" in line]
    assert len(whoami) == 1, lines
    method, path, status, duration, user, request_id = whoami[0].split(" ")
    assert (method, status, user) == ("GET", "200", alice.user_id)
    assert path == f"{V3}/account/whoami?access_token=<redacted>&x=1"
    assert duration.endswith("ms") and float(duration[:-2]) >= 0 and request_id
    assert any(" 414 " in line for line in lines), lines  # refused by the parser, logged all the same
    assert not any(alice.token in r.getMessage() for r in caplog.records)


async def test_access_log_can_be_turned_off(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = await serve(access_log=False)
    with caplog.at_level(logging.INFO, logger="whispr.access"):
        assert (await client.get("/_matrix/client/versions")).status == 200
    assert not [r for r in caplog.records if r.name == "whispr.access"]


# ---- the federation listener -----------------------------------------------------------------

@pytest.fixture
async def federated(serve: Any, tmp_path: Any) -> Any:
    """This app with its federation listener on a loopback port, and a hand-built peer server."""
    port = free_port()
    client = await serve(server_name=f"127.0.0.1:{port}", federation={
        **federation_config()["federation"], "enabled": True, "listen": {"port": port}})
    peer = Peer(tmp_path)
    await peer.start()
    yield client, peer, f"127.0.0.1:{port}"
    await peer.close()


async def test_federation_nested_body_is_m_bad_json_before_the_signature(federated: Any) -> None:
    _client, peer, ours = federated
    header = f'X-Matrix origin="{peer.name}",destination="{ours}",key="ed25519:p1",sig="AAAA"'
    async with aiohttp.ClientSession() as session:
        for body in (b"[" * 100_000, _nested(MAX_JSON_DEPTH + 1), rb'{"pdus": [], "edus": [], "x": "\udc00"}'):
            resp = await session.put(f"https://{ours}/_matrix/federation/v1/send/t1", data=body, ssl=False,
                                     headers={"Authorization": header, "Content-Type": "application/json"})
            await _matrix_error(resp, 400, "M_BAD_JSON")
        resp = await session.get(f"https://{ours}/_matrix/federation/v1/" + "a" * 9000, ssl=False)
        await _matrix_error(resp, 414, "M_TOO_LARGE")


async def test_federation_pdus_outside_canonical_json_are_dropped(federated: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    client, peer, ours = federated
    alice = await User.new(client, "alice")
    room = await alice.create_room(preset="public_chat", room_version="10")
    mallory = f"@mallory:{peer.name}"
    template = await peer.client.get_json(ours, f"/_matrix/federation/v1/make_join/{room}/{mallory}", {"ver": ["10"]})
    join = sign_event({k: v for k, v in template["event"].items() if k != "origin"}, peer.name, peer.key, ROOM_V10)
    join_id = compute_event_id(join, ROOM_V10)
    await peer.client.put_json(ours, f"/_matrix/federation/v2/send_join/{room}/{join_id}", join)
    state = {(e["type"], e["state_key"]): e["event_id"] for e in await alice.call("GET", f"/rooms/{room}/state")}
    auth_ids = [state[("m.room.create", "")], state[("m.room.power_levels", "")], join_id]

    def message(content: dict[str, Any], depth: int) -> dict[str, Any]:
        return peer.event(room, mallory, "m.room.message", {"msgtype": "m.text", "body": "n", **content},
                          [join_id], auth_ids, join["depth"] + depth)

    big, floating, fine = message({"n": 2**60}, 1), message({"n": 0.5}, 2), message({"n": MAX_SAFE_INTEGER}, 3)
    with caplog.at_level(logging.INFO, logger="whispr.access"):
        result = await peer.send(ours, [big, floating, fine], "t-numbers")
    ids = [compute_event_id(e, ROOM_V10) for e in (big, floating, fine)]
    assert "canonical JSON" in result["pdus"][ids[0]]["error"]
    assert "canonical JSON" in result["pdus"][ids[1]]["error"]
    assert result["pdus"][ids[2]] == {}
    for dropped in ids[:2]:
        await alice.call("GET", f"/rooms/{room}/event/{dropped}", expect=404)
    assert (await alice.call("GET", f"/rooms/{room}/event/{ids[2]}"))["content"]["n"] == MAX_SAFE_INTEGER
    lines = [r.getMessage() for r in caplog.records if r.name == "whispr.access"]
    assert any(line.startswith("PUT /_matrix/federation/v1/send/t-numbers 200 ") and f" {peer.name} " in line
               for line in lines), lines


# ---- item 11: slow clients --------------------------------------------------------------------

async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before it closed the connection, which must happen within `seconds`."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_a_slow_request_head_is_cut_off(serve: Any) -> None:
    client = await serve(limits={"header_timeout_s": 1.0})
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        for i in range(40):  # a header line every 0.25 s: never idle, never done
            await asyncio.sleep(0.25)
            writer.write(b"X-Slow-%d: y\r\n" % i)

    dripping = asyncio.create_task(trickle())
    started = asyncio.get_running_loop().time()
    try:
        assert await _closed_within(reader, 5) == b""
    finally:
        dripping.cancel()
        writer.close()
    assert asyncio.get_running_loop().time() - started < 3
    # A request sent at an ordinary pace is answered.
    assert (await client.get("/_matrix/client/versions")).status == 200


async def test_a_stalled_request_body_is_cut_off(serve: Any) -> None:
    client = await serve(limits={"body_timeout_s": 0.5})
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"type\": ")
    started = asyncio.get_running_loop().time()
    try:
        await _closed_within(reader, 5)
    finally:
        writer.close()
    assert asyncio.get_running_loop().time() - started < 3
    # A body that keeps coming, slower than the timeout in total, is read to its end.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    body = b'{"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "x"}'
    writer.write(b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 25):
        writer.write(body[i:i + 25])
        await asyncio.sleep(0.2)
    answer = await _closed_within(reader, 10)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"403" and b"M_FORBIDDEN" in answer, answer


async def test_typing_timeout_is_clamped(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typing notice with a timeout of years ends at typing_state.MAX_TIMEOUT_MS (shortened here)."""
    monkeypatch.setattr(typing_state, "MAX_TIMEOUT_MS", 400)
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"/join/{room}")
    since = (await bob.sync())["next_batch"]
    for timeout in (10**15, MAX_SAFE_INTEGER):
        await alice.call("PUT", f"/rooms/{room}/typing/{alice.user_id}", json={"typing": True, "timeout": timeout})
        body = await bob.sync(since)
        assert {"type": "m.typing", "content": {"user_ids": [alice.user_id]}} in \
            body["rooms"]["join"][room]["ephemeral"]["events"]
        body = await bob.sync(body["next_batch"], timeout=5000)  # woken when the notice expires
        assert {"type": "m.typing", "content": {"user_ids": []}} in \
            body["rooms"]["join"][room]["ephemeral"]["events"]
        since = body["next_batch"]
