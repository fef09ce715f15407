"""Hostile input gets a Matrix error, never a 500 or a plain-text body; event content stays canonical JSON.

Over HTTP against the running app on both backends: deeply nested JSON, lone surrogates, numbers
canonical JSON forbids, filter IDs beyond 64 bits, request lines and headers aiohttp refuses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from homeserver.json_input import MAX_JSON_DEPTH, MAX_SAFE_INTEGER
from tests.rooms_helpers import V3, User


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
