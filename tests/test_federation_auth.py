"""X-Matrix request authentication, end to end over real TLS on loopback.

A sender (a real FederationClient) calls a receiver's aiohttp app whose handler runs
`authenticate_request`; the receiver's KeyRing fetches the sender's key from the sender's own
HTTPS key endpoint. Every failure mode is a hand-built request answered 401 M_UNAUTHORIZED.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import sign_json, verify_signed_json

from federation.client import build_uri
from federation.request_auth import parse_x_matrix, request_json, sign_request
from tests.test_federation_keys import (Peer, TestPKI, bound_socket, make_sqlite_store,  # noqa: F401 (fixtures)
                                        peers, pki)

pytestmark = pytest.mark.usefixtures("pki")

TEST_PATH = "/_matrix/federation/v1/test/"


# ---- the header format --------------------------------------------------------------------------

def test_sign_request_header_is_the_spec_format_and_verifies() -> None:
    key = generate_signing_key("k1")
    header = sign_request("origin.test", "dest.test:8448", "put", "/_matrix/x?a=b", {"x": 1}, key)
    assert header.startswith('X-Matrix origin="origin.test",destination="dest.test:8448",key="ed25519:k1",sig="')
    params = parse_x_matrix(header)
    signed = request_json("origin.test", "dest.test:8448", "PUT", "/_matrix/x?a=b", {"x": 1})
    signed["signatures"] = {"origin.test": {params["key"]: params["sig"]}}
    verify_signed_json(signed, "origin.test", get_verify_key(key))
    # Same object as the spec's example code builds (method upper case, content only when given).
    assert request_json("o", "d", "get", "/p", None) == {"method": "GET", "uri": "/p", "origin": "o",
                                                        "destination": "d"}


@pytest.mark.parametrize("header, expected", [
    ('X-Matrix origin="a.test",key="ed25519:1",sig="s"', {"origin": "a.test", "key": "ed25519:1", "sig": "s"}),
    # unquoted values with colons, spaces/tabs around commas, names in any case
    ('X-Matrix  ORIGIN=a.test:8448 ,\tKey=ed25519:1 , sig=abc+/=', {"origin": "a.test:8448", "key": "ed25519:1",
                                                                   "sig": "abc+/="}),
    ('x-matrix origin="a\\"b",destination="d",key="k",sig="s",future="x"',
     {"origin": 'a"b', "destination": "d", "key": "k", "sig": "s", "future": "x"}),
])
def test_parse_x_matrix(header: str, expected: dict[str, str]) -> None:
    assert parse_x_matrix(header) == expected


@pytest.mark.parametrize("header", [
    "Bearer abc", "X-Matrix", 'X-Matrix origin="a', "X-Matrix origin=a key=b", "X-Matrix =a",
    'X-Matrix origin="a",origin="b"', "X-Matrix origin=",
])
def test_parse_x_matrix_rejects_malformed(header: str) -> None:
    with pytest.raises(ValueError):
        parse_x_matrix(header)


# ---- round trips --------------------------------------------------------------------------------

async def test_signed_requests_are_accepted(peers: Callable[..., Awaitable[Peer]]) -> None:
    sender, receiver = await peers(), await peers()
    got = await sender.client.get_json(receiver.server_name, TEST_PATH + "plain")
    assert got["origin"] == sender.server_name and got["method"] == "GET" and got["content"] is None

    # Query strings and path characters are signed exactly as sent.
    query = {"room_alias": "#a b:c/d?e&f=g", "ver": ["10", "11"], "limit": 5, "flag": True}
    got = await sender.client.get_json(receiver.server_name, TEST_PATH + "!room:x.test/$ev", query)
    assert got["origin"] == sender.server_name
    assert got["uri"] == build_uri(TEST_PATH + "!room:x.test/$ev", query)
    assert got["path"] == TEST_PATH + "!room:x.test/$ev"
    assert got["query"]["room_alias"] == "#a b:c/d?e&f=g" and got["query"]["flag"] == "true"

    body = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"ü": "ñ"}}]}
    got = await sender.client.put_json(receiver.server_name, TEST_PATH + "send/txn1", body)
    assert got["origin"] == sender.server_name and got["method"] == "PUT" and got["content"] == body
    got = await sender.client.post_json(receiver.server_name, TEST_PATH + "post", {})
    assert got["method"] == "POST" and got["content"] == {}

    # One key fetch served all of that.
    assert len(sender.requests_to("/_matrix/key/v2/server")) == 1


async def _raw(receiver: Peer, method: str, path: str, *, authorization: str | list[str] | None = None,
               body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=receiver.config.federation.tls_ca_file)
    headers: Any = []
    for value in ([authorization] if isinstance(authorization, str) else authorization or []):
        headers.append(("Authorization", value))
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    async with aiohttp.ClientSession() as http:
        url = f"https://127.0.0.1:{receiver.port}{path}"
        async with http.request(method, url, data=body, headers=headers, ssl=ctx) as resp:
            return resp.status, await resp.json()


async def test_each_failure_is_401_unauthorized(peers: Callable[..., Awaitable[Peer]]) -> None:
    sender, receiver = await peers(), await peers()
    key = sender.signing_key
    path = TEST_PATH + "x?a=1"
    content = {"hello": "world"}
    raw_body = json.dumps(content).encode()

    def sign(method: str = "PUT", uri: str = path, body: Any = content, destination: str = receiver.server_name,
             origin: str = sender.server_name, signing_key: Any = key) -> str:
        return sign_request(origin, destination, method, uri, body, signing_key)

    # the genuine request passes (so each failure below is down to the one thing changed)
    status, got = await _raw(receiver, "PUT", path, authorization=sign(), body=raw_body)
    assert status == 200 and got["origin"] == sender.server_name

    wrong_key = generate_signing_key(key.version)  # same key ID, another key
    closed = bound_socket()
    cases: dict[str, str | list[str] | None] = {
        "unsigned": None,
        "not x-matrix": "Bearer abc",
        "malformed": 'X-Matrix origin="unterminated',
        "missing sig": f'X-Matrix origin="{sender.server_name}",key="ed25519:{key.version}"',
        "wrong destination": sign(destination="someone-else.test"),
        "unknown key id": sign().replace(f"ed25519:{key.version}", "ed25519:unknown"),
        "unsupported algorithm": sign().replace(f"ed25519:{key.version}", "rsa:1"),
        "bad signature": sign(signing_key=wrong_key),
        "garbage signature": sign().rsplit('sig="', 1)[0] + 'sig="!!!"',
        "tampered body": sign(body={"hello": "mars"}),
        "unsigned body": sign(body=None),
        "other uri": sign(uri=TEST_PATH + "y?a=1"),
        "other query": sign(uri=TEST_PATH + "x?a=2"),
        "other method": sign(method="POST"),
        "claims another origin": sign(origin=f"127.0.0.1:{closed.getsockname()[1]}"),
        "origin not a server name": sign(origin="bad origin"),
        "two origins": [sign(), sign(origin="other.test")],
    }
    try:
        for what, authorization in cases.items():
            status, got = await _raw(receiver, "PUT", path, authorization=authorization, body=raw_body)
            assert (status, got.get("errcode")) == (401, "M_UNAUTHORIZED"), (what, got)
    finally:
        closed.close()

    # A body that is not JSON cannot have been signed: 400 M_NOT_JSON.
    status, got = await _raw(receiver, "PUT", path, authorization=sign(), body=b"{not json")
    assert (status, got["errcode"]) == (400, "M_NOT_JSON")


async def test_destination_may_be_omitted_by_older_senders(peers: Callable[..., Awaitable[Peer]]) -> None:
    sender, receiver = await peers(), await peers()
    signed = sign_json(request_json(sender.server_name, receiver.server_name, "GET", TEST_PATH + "old", None),
                       sender.server_name, sender.signing_key)
    sig = signed["signatures"][sender.server_name][sender.keyring.key_id]
    header = f"X-Matrix origin={sender.server_name},key={sender.keyring.key_id},sig={sig}"
    status, got = await _raw(receiver, "GET", TEST_PATH + "old", authorization=header)
    assert status == 200 and got["origin"] == sender.server_name
    # several X-Matrix headers: one valid signature is enough
    bad = sign_request(sender.server_name, receiver.server_name, "GET", TEST_PATH + "old", None,
                       generate_signing_key(sender.signing_key.version))
    status, got = await _raw(receiver, "GET", TEST_PATH + "old", authorization=[bad, header])
    assert status == 200


async def test_requests_signed_with_a_retired_key_are_refused(tmp_path: Path, pki: TestPKI,  # noqa: F811
                                                              peers: Callable[..., Awaitable[Peer]]) -> None:
    from federation.keys import OldVerifyKey

    retired = generate_signing_key("retired")
    sender = await peers()
    # The sender publishes `retired` under old_verify_keys (expired a minute ago).
    from homeserver.clock import now_ms
    sender.keyring._old_keys = {"ed25519:retired": OldVerifyKey(get_verify_key(retired), now_ms() - 60_000)}  # noqa: SLF001
    receiver = await peers(refetch_interval_s=0)
    header = sign_request(sender.server_name, receiver.server_name, "GET", TEST_PATH + "z", None, retired)
    status, got = await _raw(receiver, "GET", TEST_PATH + "z", authorization=header)
    assert (status, got["errcode"]) == (401, "M_UNAUTHORIZED")
    assert "retired" in got["error"]
