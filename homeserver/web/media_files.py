"""Media file responses both faces serve: downloads (the federation listener still answers the
old unauthenticated download path for servers that predate authenticated media)."""

from __future__ import annotations

from aiohttp import web

from homeserver.errors import MatrixError
from homeserver.web.requests import bool_param, hs, int_param
from media.headers import download_headers


async def download(request: web.Request, allow_remote: bool, unauthenticated: bool = False) -> web.StreamResponse:
    media = await hs(request).media.open(
        request.match_info["server_name"], request.match_info["media_id"],
        timeout_ms=int_param(request, "timeout_ms"), allow_remote=allow_remote, unauthenticated=unauthenticated)
    filename = request.match_info.get("file_name") or media.record.upload_name
    return web.FileResponse(media.path, headers=download_headers(media.record.content_type, filename))


def legacy_allowed(request: web.Request) -> bool:
    if not hs(request).config.media.legacy_unauthenticated_downloads:
        raise MatrixError(404, "M_NOT_FOUND", "Unauthenticated media is disabled: use /_matrix/client/v1/media")
    return bool_param(request, "allow_remote", True)


async def download_legacy(request: web.Request) -> web.StreamResponse:
    return await download(request, allow_remote=legacy_allowed(request), unauthenticated=True)
