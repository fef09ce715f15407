"""Media over federation, both ways.

Inbound: `GET /_matrix/federation/v1/media/download/{mediaId}` and `.../media/thumbnail/{mediaId}`
answer with multipart/mixed: a JSON part (`{}`, the metadata) then the bytes.
Outbound: `FederationMediaSource` fetches an item from its origin the same way (following a
`Location` part when the origin redirects), falling back to the deprecated
`/_matrix/media/v3/download` for servers that predate authenticated media.
"""

from __future__ import annotations

import asyncio
import logging
from email.message import Message
from typing import AsyncIterator
from urllib.parse import quote

import aiohttp
from aiohttp import web

from homeserver.web.requests import hs
from federation.client import FederationClient, FederationClientError, FederationError
from homeserver.errors import MatrixError, invalid_param, not_found
from media.headers import content_disposition
from media.ids import valid_media_id
from media.repository import BodySink, RemoteFetched

log = logging.getLogger("whispr.federation.media")

F1 = "/_matrix/federation/v1"
CHUNK = 256 * 1024
MAX_METADATA_BYTES = 64 * 1024


# ---- inbound ------------------------------------------------------------------------------------

def _multipart(path: object, content_type: str, disposition: str) -> web.Response:
    writer = aiohttp.MultipartWriter("mixed")
    writer.append_json({})
    writer.append(open(path, "rb"), {"Content-Type": content_type,  # type: ignore[call-overload]
                                     "Content-Disposition": disposition})
    return web.Response(body=writer)


def _timeout(request: web.Request) -> int | None:
    raw = request.query.get("timeout_ms")
    try:
        return None if raw is None else int(raw)
    except ValueError:
        raise invalid_param("timeout_ms must be an integer") from None


async def download(request: web.Request, origin: str) -> web.Response:
    server = hs(request)
    media = await server.media.open(server.config.server_name, request.match_info["media_id"],
                                    timeout_ms=_timeout(request), allow_remote=False)
    record = media.record
    return _multipart(media.path, record.content_type, content_disposition(record.content_type, record.upload_name))


async def thumbnail(request: web.Request, origin: str) -> web.Response:
    server = hs(request)
    try:
        width, height = int(request.query["width"]), int(request.query["height"])
    except KeyError:
        raise MatrixError(400, "M_MISSING_PARAM", "width and height are required") from None
    except ValueError:
        raise invalid_param("width and height must be integers") from None
    path, content_type = await server.media.thumbnail(
        server.config.server_name, request.match_info["media_id"], width=width, height=height,
        method=request.query.get("method", "scale"), animated=request.query.get("animated") == "true",
        requester=f"server:{origin}", timeout_ms=_timeout(request), allow_remote=False)
    return _multipart(path, content_type, content_disposition(content_type, "thumbnail"))


def setup(app: web.Application) -> None:
    from federation.endpoints import authed

    app.router.add_get(f"{F1}/media/download/{{media_id}}", authed(download))
    app.router.add_get(f"{F1}/media/thumbnail/{{media_id}}", authed(thumbnail))
    # Servers that predate authenticated media fetch through the old unauthenticated path.
    from homeserver.web.media_files import download_legacy
    app.router.add_get("/_matrix/media/v3/download/{server_name}/{media_id}", download_legacy)


# ---- outbound -----------------------------------------------------------------------------------

def _filename(disposition: str | None) -> str | None:
    if not disposition:
        return None
    msg = Message()
    msg["Content-Disposition"] = disposition
    name = msg.get_filename()
    return str(name) if name else None


class FederationMediaSource:
    """Fetches remote media from its origin for the media repository."""

    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def fetch(self, origin: str, media_id: str, sink: BodySink, *, max_bytes: int,
                    timeout_ms: int) -> RemoteFetched:
        if not valid_media_id(media_id):
            raise not_found("No such media")
        timeout_s = max(5.0, timeout_ms / 1000 + 30.0)
        try:
            try:
                return await self._authenticated(origin, media_id, sink, max_bytes, timeout_ms, timeout_s)
            except FederationError as e:
                # Servers without authenticated media answer 404/400/405 M_UNRECOGNIZED.
                if e.errcode != "M_UNRECOGNIZED" and e.status not in (400, 405):
                    raise
                return await self._legacy(origin, media_id, sink, max_bytes, timeout_s)
        except FederationError as e:
            if e.status == 404:
                raise not_found("The origin server has no such media") from None
            if e.errcode == "M_TOO_LARGE":
                raise MatrixError(502, "M_TOO_LARGE", "Remote content is too large") from None
            if e.errcode == "M_NOT_YET_UPLOADED":
                raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded") from None
            raise MatrixError(502, "M_UNKNOWN", f"The origin server refused the media ({e.status})") from None
        except (FederationClientError, aiohttp.ClientError, asyncio.TimeoutError) as e:
            log.info("fetching mxc://%s/%s failed: %s", origin, media_id, e)
            raise MatrixError(502, "M_UNKNOWN", "Cannot fetch the media from its origin server") from None

    async def _authenticated(self, origin: str, media_id: str, sink: BodySink, max_bytes: int,
                             timeout_ms: int, timeout_s: float) -> RemoteFetched:
        path = f"{F1}/media/download/{quote(media_id)}"
        async with self._client.request("GET", origin, path, query={"timeout_ms": timeout_ms},
                                         timeout=timeout_s) as resp:
            if resp.status != 200:
                raise await _error(resp)
            if resp.content_length is not None and resp.content_length > max_bytes + MAX_METADATA_BYTES:
                raise MatrixError(502, "M_TOO_LARGE", "Remote content is too large")
            reader = aiohttp.MultipartReader(resp.headers, resp.content)
            meta = await reader.next()
            if not isinstance(meta, aiohttp.BodyPartReader):
                raise FederationClientError("media answer has no metadata part")
            if len(await meta.read()) > MAX_METADATA_BYTES:
                raise FederationClientError("media metadata part is too large")
            part = await reader.next()
            if not isinstance(part, aiohttp.BodyPartReader):
                raise FederationClientError("media answer has no content part")
            location = part.headers.get("Location")
            if location:
                return await self._redirected(location, sink, max_bytes, timeout_s)
            stored = await sink(_part_chunks(part))
            return RemoteFetched(part.headers.get("Content-Type", "application/octet-stream"),
                                 _filename(part.headers.get("Content-Disposition")), stored)

    async def _legacy(self, origin: str, media_id: str, sink: BodySink, max_bytes: int,
                      timeout_s: float) -> RemoteFetched:
        path = f"/_matrix/media/v3/download/{quote(origin, safe='')}/{quote(media_id)}"
        async with self._client.request("GET", origin, path, query={"allow_remote": "false"}, auth=False,
                                         timeout=timeout_s) as resp:
            if resp.status != 200:
                raise await _error(resp)
            return await _fetched(resp, sink)

    async def _redirected(self, location: str, sink: BodySink, max_bytes: int, timeout_s: float) -> RemoteFetched:
        # The origin hands the bytes off to another host (a CDN): fetched without our signature,
        # through the same address guard as federation requests.
        async with self._client.fetch_url(location, timeout=timeout_s) as resp:
            if resp.status != 200:
                raise FederationError(resp.status, "M_UNKNOWN", {"error": "redirected media fetch failed"})
            return await _fetched(resp, sink)


async def _fetched(resp: aiohttp.ClientResponse, sink: BodySink) -> RemoteFetched:
    stored = await sink(resp.content.iter_chunked(CHUNK))
    return RemoteFetched(resp.headers.get("Content-Type", "application/octet-stream"),
                         _filename(resp.headers.get("Content-Disposition")), stored)


async def _part_chunks(part: aiohttp.BodyPartReader) -> AsyncIterator[bytes]:
    while True:
        chunk = await part.read_chunk(CHUNK)
        if not chunk:
            return
        yield chunk


async def _error(resp: aiohttp.ClientResponse) -> FederationError:
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = {}
    errcode = body.get("errcode") if isinstance(body, dict) else None
    return FederationError(resp.status, errcode if isinstance(errcode, str) else "M_UNKNOWN", body)
