"""Media endpoints: uploads (/_matrix/media/v3, v1/create), downloads and thumbnails on the
authenticated /_matrix/client/v1/media paths and the deprecated /_matrix/media/v3 ones, config."""

from __future__ import annotations

from aiohttp import web

from client_api.http import client_ip, hs, ok, requester
from homeserver.errors import MatrixError
from homeserver.web.media_files import download, download_legacy, legacy_allowed
from homeserver.web.requests import bool_param, int_param
from media.headers import download_headers

MEDIA_V3 = "/_matrix/media/v3"
MEDIA_V1 = "/_matrix/media/v1"
CLIENT_MEDIA = "/_matrix/client/v1/media"


def _content_length(request: web.Request) -> int | None:
    return request.content_length


async def upload(request: web.Request) -> web.Response:
    server = hs(request)
    who = await requester(request)
    await server.limiter.check("media_upload", who.user_id)
    uri = await server.media.upload(
        who.user_id, request.content.iter_any(), content_type=request.headers.get("Content-Type"),
        filename=request.query.get("filename"), content_length=_content_length(request))
    return ok({"content_uri": uri})


async def create(request: web.Request) -> web.Response:
    server = hs(request)
    who = await requester(request)
    await server.limiter.check("media_upload", who.user_id)
    return ok(await server.media.create(who.user_id))


async def upload_to(request: web.Request) -> web.Response:
    server = hs(request)
    who = await requester(request)
    await server.media.upload_to(
        who.user_id, request.match_info["server_name"], request.match_info["media_id"],
        request.content.iter_any(), content_type=request.headers.get("Content-Type"),
        filename=request.query.get("filename"), content_length=_content_length(request))
    return ok({})


async def config(request: web.Request) -> web.Response:
    await requester(request)
    return ok(hs(request).media.public_config())


async def _thumbnail(request: web.Request, allow_remote: bool, requester_key: str,
                     unauthenticated: bool = False) -> web.StreamResponse:
    width, height = int_param(request, "width"), int_param(request, "height")
    if width is None or height is None:
        raise MatrixError(400, "M_MISSING_PARAM", "width and height are required")
    path, content_type = await hs(request).media.thumbnail(
        request.match_info["server_name"], request.match_info["media_id"], width=width, height=height,
        method=request.query.get("method", "scale"), animated=bool_param(request, "animated", False),
        requester=requester_key, timeout_ms=int_param(request, "timeout_ms"), allow_remote=allow_remote,
        unauthenticated=unauthenticated)
    ext = content_type.rsplit("/", 1)[-1].replace("jpeg", "jpg")
    return web.FileResponse(path, headers=download_headers(content_type, f"thumbnail.{ext}"))


async def download_authed(request: web.Request) -> web.StreamResponse:
    await requester(request)
    return await download(request, allow_remote=True)


async def thumbnail_authed(request: web.Request) -> web.StreamResponse:
    who = await requester(request)
    return await _thumbnail(request, allow_remote=True, requester_key=who.user_id)


async def thumbnail_legacy(request: web.Request) -> web.StreamResponse:
    return await _thumbnail(request, allow_remote=legacy_allowed(request), requester_key=f"ip:{client_ip(request)}",
                            unauthenticated=True)


async def preview_url(request: web.Request) -> web.Response:
    await requester(request)
    # URL previews would make this server fetch arbitrary URLs for clients; not offered.
    raise MatrixError(404, "M_UNRECOGNIZED", "URL previews are not enabled on this server")


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post(f"{MEDIA_V3}/upload", upload)
    r.add_post(f"{MEDIA_V1}/create", create)
    r.add_put(f"{MEDIA_V3}/upload/{{server_name}}/{{media_id}}", upload_to)
    r.add_get(f"{MEDIA_V3}/config", config)
    r.add_get(f"{CLIENT_MEDIA}/config", config)
    for prefix, get_file, get_thumbnail in ((CLIENT_MEDIA, download_authed, thumbnail_authed),
                                            (MEDIA_V3, download_legacy, thumbnail_legacy)):
        r.add_get(f"{prefix}/download/{{server_name}}/{{media_id}}", get_file)
        r.add_get(f"{prefix}/download/{{server_name}}/{{media_id}}/{{file_name}}", get_file)
        r.add_get(f"{prefix}/thumbnail/{{server_name}}/{{media_id}}", get_thumbnail)
    r.add_get(f"{CLIENT_MEDIA}/preview_url", preview_url)
    r.add_get(f"{MEDIA_V3}/preview_url", preview_url)

