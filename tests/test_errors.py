"""Matrix JSON errors for bad input, unknown paths and methods, oversized bodies."""

from typing import Any

from tests.conftest import auth, register


async def test_unknown_path_is_m_unrecognized_404(client: Any) -> None:
    resp = await client.get("/_matrix/client/v3/nonexistent")
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"


async def test_wrong_method_is_m_unrecognized_405(client: Any) -> None:
    resp = await client.delete("/_matrix/client/v3/login")
    assert resp.status == 405
    assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"


async def test_not_json(client: Any) -> None:
    resp = await client.post("/_matrix/client/v3/login", data=b"{not json")
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"


async def test_json_but_not_object(client: Any) -> None:
    resp = await client.post("/_matrix/client/v3/login", data=b"[1, 2]")
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_BAD_JSON"


async def test_nan_is_not_json(client: Any) -> None:
    resp = await client.post("/_matrix/client/v3/login", data=b'{"type": NaN}')
    assert (await resp.json())["errcode"] == "M_NOT_JSON"


async def test_body_over_cap_is_m_too_large(serve: Any) -> None:
    client = await serve(limits={"max_request_body_bytes": 4096})
    resp = await client.post("/_matrix/client/v3/login", data=b'{"x": "' + b"a" * 10_000 + b'"}')
    assert resp.status == 413
    assert (await resp.json())["errcode"] == "M_TOO_LARGE"


async def test_missing_and_unknown_token(client: Any) -> None:
    resp = await client.get("/_matrix/client/v3/account/whoami")
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"
    resp = await client.get("/_matrix/client/v3/account/whoami", headers=auth("garbage"))
    assert resp.status == 401
    body = await resp.json()
    assert body["errcode"] == "M_UNKNOWN_TOKEN" and body["soft_logout"] is False


async def test_token_signed_with_another_secret_is_refused(serve: Any) -> None:
    a = await serve()
    alice = await register(a, "alice")
    b = await serve(secrets={"jwt_secret": "another-secret-entirely-and-long-enough-for-hs256"})
    resp = await b.get("/_matrix/client/v3/account/whoami", headers=auth(alice["access_token"]))
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_cors_preflight(client: Any) -> None:
    resp = await client.options("/_matrix/client/v3/login")
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_health_answers_ok_while_the_database_does(client: Any) -> None:
    resp = await client.get("/health")
    assert resp.status == 200 and await resp.text() == "OK"
    from homeserver.web.requests import HS
    await client.app[HS].store.db.close()  # the database goes away
    resp = await client.get("/health")
    assert resp.status == 503 and (await resp.json())["errcode"] == "M_UNKNOWN"
