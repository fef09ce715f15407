"""Encryption keys: upload, query, claim, changes; cross-signing keys and signatures."""

from __future__ import annotations


from aiohttp import web

from client_api.http import CLIENT_V3, hs, json_body, ok, prove_password, requester
from homeserver.errors import MatrixError
from homeserver.sync.sync import SyncToken


async def upload(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request, allow_empty=True)
    return ok(await hs(request).e2ee.upload(who.user_id, who.device_id, body))


async def upload_for_device(request: web.Request) -> web.Response:
    """The deprecated /keys/upload/{deviceId}: keys always go to the requesting device, whatever the
    path says (as Synapse does); device keys for another device are refused by their own check."""
    return await upload(request)


async def query(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request, allow_empty=True)
    return ok(await hs(request).e2ee.device_keys.query(who.user_id, body.get("device_keys", {}),
                                                       body.get("timeout")))


async def claim(request: web.Request) -> web.Response:
    await requester(request)
    body = await json_body(request, allow_empty=True)
    return ok(await hs(request).e2ee.one_time_keys.claim(body.get("one_time_keys", {}), body.get("timeout")))


async def changes(request: web.Request) -> web.Response:
    who = await requester(request)
    try:
        start, end = SyncToken.parse(request.query["from"]), SyncToken.parse(request.query["to"])
    except KeyError:
        raise MatrixError(400, "M_MISSING_PARAM", "from and to are required") from None
    server = hs(request)
    rooms = list(await server.store.rooms.rooms_for_user(who.user_id))
    found = await server.e2ee.lists.changes(who.user_id, start.stream, end.stream, rooms)
    return ok({"changed": found.changed, "left": found.left})


async def device_signing_upload(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    body = await json_body(request)
    if await server.e2ee.cross_signing.needs_auth(who.user_id, body):
        await prove_password(request, who, body.get("auth"), f"device_signing:{who.user_id}", limited=True)
    await server.e2ee.cross_signing.upload(who.user_id, body)
    return ok()


async def signatures_upload(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    return ok(await hs(request).e2ee.cross_signing.upload_signatures(who.user_id, body))


def setup(app: web.Application) -> None:
    app.router.add_post(f"{CLIENT_V3}/keys/upload", upload)
    app.router.add_post(f"{CLIENT_V3}/keys/upload/{{device_id}}", upload_for_device)
    app.router.add_post(f"{CLIENT_V3}/keys/query", query)
    app.router.add_post(f"{CLIENT_V3}/keys/claim", claim)
    app.router.add_get(f"{CLIENT_V3}/keys/changes", changes)
    app.router.add_post(f"{CLIENT_V3}/keys/device_signing/upload", device_signing_upload)
    app.router.add_post(f"{CLIENT_V3}/keys/signatures/upload", signatures_upload)
