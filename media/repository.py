"""The media repository: uploads (direct and async), downloads, thumbnails, remote media cache.

Metadata lives in the database (storage/media.py), bytes on disk (media/files.py). Remote media
comes through a `RemoteMediaSource` that the federation package plugs in when it starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, Awaitable, Callable, Protocol

from homeserver.clock import now_ms
from homeserver.config import MediaConfig
from homeserver.errors import MatrixError, forbidden, invalid_param, not_found
from homeserver.ratelimit import RateLimiter
from homeserver.accounts.models import MediaRecord
from media.files import MediaFiles, StoredFile, WrittenFile
from media.headers import clean_content_type, sanitise_filename
from media.ids import check_media_ref, new_media_id, parse_mxc
from media.thumbnails import (EXTENSIONS, ThumbnailError, ThumbnailSpec, choose_spec, make_thumbnail,
                              thumbnail_sizes)
from storage.media import MediaStore

log = logging.getLogger("whispr.media")

DEFAULT_WAIT_MS = 20_000
# A cached remote item's last access is written at most this often (not on every download).
TOUCH_INTERVAL_MS = 3_600_000
# Thumbnail files remembered in memory, so a cached thumbnail costs no trip to the thread pool.
THUMBNAIL_PATHS_CACHED = 4096

BodySink = Callable[[AsyncIterable[bytes]], Awaitable[StoredFile]]


@dataclass(frozen=True)
class RemoteFetched:
    content_type: str
    filename: str | None
    stored: StoredFile


class RemoteMediaSource(Protocol):
    """Fetches media from its origin server (implemented over federation)."""

    async def fetch(self, origin: str, media_id: str, sink: BodySink, *, max_bytes: int,
                    timeout_ms: int) -> RemoteFetched:
        """Stream the media's bytes into `sink`. Raises MatrixError: 404 unknown, 502 unreachable or too large."""
        ...


@dataclass(frozen=True)
class MediaFile:
    record: MediaRecord
    path: Path


def too_large(limit: int, status: int = 413) -> MatrixError:
    return MatrixError(status, "M_TOO_LARGE", f"Content is larger than the {limit} bytes allowed")


def frozen() -> MatrixError:
    """Media newer than the freeze, asked for on a legacy unauthenticated path."""
    return not_found("No such media on this unauthenticated path (media is frozen): use /_matrix/client/v1/media")


class MediaRepository:
    def __init__(self, server_name: str, config: MediaConfig, root: Path, store: MediaStore,
                 executor: Executor, limiter: RateLimiter | None = None) -> None:
        self.server_name = server_name
        self.config = config
        self.files = MediaFiles(root, executor)
        self.remote: RemoteMediaSource | None = None
        self._store = store
        self._executor = executor
        self._limiter = limiter
        self._thumbnail_sizes = thumbnail_sizes(config.extra_thumbnail_sizes)
        # Media created from this time on (ms) is not served on the legacy unauthenticated
        # paths; None: no freeze. Set by `start`.
        self.unauthenticated_freeze_ts: int | None = None
        # Downloads waiting for an async upload, woken when it completes in this process.
        self._upload_waiters: dict[str, asyncio.Event] = {}
        # One fetch per remote item and one generation per thumbnail, however many ask at once.
        self._fetches: dict[tuple[str, str], asyncio.Future[MediaRecord]] = {}
        self._thumbnailing: dict[tuple[str, str], asyncio.Future[tuple[Path, str]]] = {}
        # Serialises "store these bytes + record them" against "delete the bytes if unused".
        self._sha_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._thumbnail_paths: OrderedDict[tuple[str, str], tuple[Path, str]] = OrderedDict()
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifetime --

    async def start(self) -> None:
        if self.config.legacy_unauthenticated_freeze:
            # The first start with the freeze on records its time; every later start (and every
            # worker) reads the same one back, so media from before it keeps its legacy links.
            self.unauthenticated_freeze_ts = self.config.legacy_unauthenticated_freeze_ts or \
                await self._store.unauthenticated_freeze_ts(now_ms())
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass

    def public_config(self) -> dict[str, int]:
        return {"m.upload.size": self.config.max_upload_bytes}

    def mxc(self, media_id: str) -> str:
        return f"mxc://{self.server_name}/{media_id}"

    # -- uploads --

    async def _receive(self, body: AsyncIterable[bytes], content_length: int | None) -> WrittenFile:
        limit = self.config.max_upload_bytes
        if content_length is not None and content_length > limit:
            raise too_large(limit)
        return await self.files.write_stream(body, limit, lambda: too_large(limit))

    def _sha_lock(self, sha256: str) -> asyncio.Lock:
        lock = self._sha_locks.get(sha256)
        if lock is None:
            lock = self._sha_locks[sha256] = asyncio.Lock()
        return lock

    async def upload(self, user_id: str, body: AsyncIterable[bytes], *, content_type: str | None,
                     filename: str | None, content_length: int | None) -> str:
        """Store an upload; returns its mxc URI."""
        written = await self._receive(body, content_length)
        media_id = new_media_id()
        async with self._sha_lock(written.stored.sha256):
            stored = await self.files.commit(written)
            await self._store.insert_local(media_id, user_id, clean_content_type(content_type),
                                           sanitise_filename(filename), stored.size, stored.sha256, now_ms())
        return self.mxc(media_id)

    async def create(self, user_id: str) -> dict[str, object]:
        """Reserve an mxc URI for an async upload (POST /create)."""
        now = now_ms()
        if await self._store.count_pending(user_id, now) >= self.config.max_pending_uploads:
            raise MatrixError(429, "M_LIMIT_EXCEEDED",
                              f"At most {self.config.max_pending_uploads} uploads may be pending",
                              retry_after_ms=60_000)
        media_id = new_media_id()
        expires = now + self.config.pending_upload_ttl_s * 1000
        await self._store.create_pending(media_id, user_id, now, expires)
        return {"content_uri": self.mxc(media_id), "unused_expires_at": expires}

    async def upload_to(self, user_id: str, server_name: str, media_id: str, body: AsyncIterable[bytes], *,
                        content_type: str | None, filename: str | None, content_length: int | None) -> None:
        """Fill in an mxc URI reserved by `create` (PUT /upload/{serverName}/{mediaId})."""
        check_media_ref(server_name, media_id)
        record = await self._store.get_local(self.server_name, media_id) \
            if server_name == self.server_name else None
        if record is None or (record.pending and (record.unused_expires_ts or 0) <= now_ms()):
            raise not_found("No such media, or its upload slot has expired")
        if record.user_id != user_id:
            raise forbidden("This upload slot belongs to another user")
        if not record.pending:
            raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "This media has been uploaded already")
        written = await self._receive(body, content_length)
        async with self._sha_lock(written.stored.sha256):
            stored = await self.files.commit(written)
            completed = await self._store.complete_pending(media_id, clean_content_type(content_type),
                                                           sanitise_filename(filename), stored.size, stored.sha256)
            if not completed:
                await self._drop_if_unused(stored.sha256)
        if not completed:
            raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "This media has been uploaded already")
        waiter = self._upload_waiters.pop(media_id, None)
        if waiter is not None:
            waiter.set()

    # -- downloads --

    async def open(self, server_name: str, media_id: str, *, timeout_ms: int | None = None,
                   allow_remote: bool = True, unauthenticated: bool = False) -> MediaFile:
        """The record and file of an item, fetching remote media first if it is not cached.

        `unauthenticated` (the legacy paths): with the freeze on, media created since the freeze
        is not found, and nothing is fetched from other servers (it would be newer)."""
        check_media_ref(server_name, media_id)
        frozen_from = self.unauthenticated_freeze_ts if unauthenticated else None
        if server_name == self.server_name:
            record = await self._local_ready(media_id, timeout_ms, frozen_from)
        elif not allow_remote:
            raise not_found("No such media (remote media not requested)")
        else:
            record = await self._remote(server_name, media_id, timeout_ms, frozen_from)
        assert record.sha256 is not None
        return MediaFile(record, self.files.path(record.sha256))

    async def _local_ready(self, media_id: str, timeout_ms: int | None, frozen_from: int | None) -> MediaRecord:
        wait_ms = min(DEFAULT_WAIT_MS if timeout_ms is None else max(0, timeout_ms), self.config.max_download_wait_ms)
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            record = await self._store.get_local(self.server_name, media_id)
            if record is None or record.quarantined:
                raise not_found("No such media")
            if frozen_from is not None and record.created_ts >= frozen_from:
                raise frozen()
            if not record.pending:
                return record
            if (record.unused_expires_ts or 0) <= now_ms():
                raise not_found("No such media (its upload slot expired unused)")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
            event = self._upload_waiters.setdefault(media_id, asyncio.Event())
            try:
                # Woken by an upload in this process; the 1 s cap notices one done by another worker.
                await asyncio.wait_for(event.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass

    async def _remote(self, origin: str, media_id: str, timeout_ms: int | None,
                      frozen_from: int | None = None) -> MediaRecord:
        record = await self._store.get_remote(origin, media_id)
        if record is not None and await self.files.exists(record.sha256 or ""):
            if record.quarantined:
                raise not_found("No such media")
            if frozen_from is not None and record.created_ts >= frozen_from:
                raise frozen()
            now = now_ms()
            if now - (record.last_access_ts or 0) > min(TOUCH_INTERVAL_MS, self.config.remote_cache_ttl_s * 100):
                await self._store.touch_remote(origin, media_id, now)
            return record
        if record is not None and record.quarantined:
            raise not_found("No such media")
        if frozen_from is not None:
            raise frozen()
        if self.remote is None:
            raise not_found("Remote media is not available: federation is off")
        key = (origin, media_id)
        pending = self._fetches.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[MediaRecord] = asyncio.get_running_loop().create_future()
        self._fetches[key] = future
        try:
            record = await self._fetch_remote(origin, media_id, timeout_ms)
            future.set_result(record)
            return record
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._fetches[key]

    async def _fetch_remote(self, origin: str, media_id: str, timeout_ms: int | None) -> MediaRecord:
        assert self.remote is not None
        limit = self.config.max_remote_bytes
        written: list[WrittenFile] = []

        async def sink(body: AsyncIterable[bytes]) -> StoredFile:
            w = await self.files.write_stream(body, limit, lambda: too_large(limit, 502))
            written.append(w)
            return w.stored

        try:
            fetched = await self.remote.fetch(origin, media_id, sink, max_bytes=limit,
                                              timeout_ms=timeout_ms if timeout_ms is not None else DEFAULT_WAIT_MS)
        except BaseException:
            for w in written:
                await self.files.discard(w)
            raise
        now = now_ms()
        record = MediaRecord(origin, media_id, clean_content_type(fetched.content_type),
                             sanitise_filename(fetched.filename), fetched.stored.size, fetched.stored.sha256,
                             now, last_access_ts=now)
        async with self._sha_lock(record.sha256 or ""):
            await self.files.commit(written[0])
            await self._store.upsert_remote(record)
        log.info("cached remote media %s (%d bytes)", record.mxc, record.size or 0)
        # Read back: the bytes may be quarantined content under another ID.
        stored = await self._store.get_remote(origin, media_id)
        if stored is None or stored.quarantined:
            raise not_found("No such media")
        return stored

    # -- thumbnails --

    async def thumbnail(self, server_name: str, media_id: str, *, width: int, height: int, method: str,
                        animated: bool, requester: str, timeout_ms: int | None = None,
                        allow_remote: bool = True, unauthenticated: bool = False) -> tuple[Path, str]:
        """(file, content type) of a thumbnail; for small images the original itself.

        Only the configured sizes are ever made (`choose_spec`), and making one is rate-limited
        per `requester` (a user ID, an IP address, a server name); serving a made one is not."""
        if method not in ("crop", "scale"):
            raise invalid_param("method must be crop or scale")
        if width < 1 or height < 1:
            raise invalid_param("width and height must be positive integers")
        media = await self.open(server_name, media_id, timeout_ms=timeout_ms, allow_remote=allow_remote,
                                unauthenticated=unauthenticated)
        local = server_name == self.server_name
        if (media.record.size or 0) > self.config.max_thumbnail_source_bytes:
            raise MatrixError(413 if local else 502, "M_TOO_LARGE", "Content is too large to thumbnail")
        spec = choose_spec(width, height, method, animated, self._thumbnail_sizes)  # type: ignore[arg-type]
        sha = media.record.sha256 or ""
        key = (sha, spec.file_stem)
        directory = self.files.thumbnail_dir(sha)
        known = self._thumbnail_paths.get(key)
        if known is not None:
            self._thumbnail_paths.move_to_end(key)
            return known
        loop = asyncio.get_running_loop()
        if key not in self._thumbnailing:
            known = await loop.run_in_executor(self._executor, _cached_thumbnail, media.path, directory, spec)
            if known is not None:
                self._remember_thumbnail(key, known)
                return known
            if self._limiter is not None:
                await self._limiter.check("thumbnail_generation", requester,
                                          bucket=self.config.thumbnail_generation_rate)
        pending = self._thumbnailing.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[tuple[Path, str]] = loop.create_future()
        self._thumbnailing[key] = future
        try:
            result = await loop.run_in_executor(
                self._executor, _cached_or_new_thumbnail, media.path, directory, spec,
                self.config.max_thumbnail_pixels, self.config.max_animated_frames)
            self._remember_thumbnail(key, result)
            future.set_result(result)
            return result
        except ThumbnailError as e:
            error = MatrixError(413 if local else 502, "M_TOO_LARGE", str(e)) if e.too_large \
                else MatrixError(400, "M_UNKNOWN", str(e))
            future.set_exception(error)
            future.exception()
            raise error from None
        except BaseException as e:
            future.set_exception(e)
            future.exception()
            raise
        finally:
            del self._thumbnailing[key]

    def _remember_thumbnail(self, key: tuple[str, str], found: tuple[Path, str]) -> None:
        self._thumbnail_paths[key] = found
        if len(self._thumbnail_paths) > THUMBNAIL_PATHS_CACHED:
            self._thumbnail_paths.popitem(last=False)

    # -- administration and expiry --

    async def lookup(self, mxc: str) -> tuple[MediaRecord, bool] | None:
        """(record, is local) of an mxc URI we hold, or None."""
        origin, media_id = parse_mxc(mxc)
        if origin == self.server_name:
            record = await self._store.get_local(origin, media_id)
            return None if record is None else (record, True)
        record = await self._store.get_remote(origin, media_id)
        return None if record is None else (record, False)

    async def set_quarantined(self, mxc: str, quarantined: bool = True) -> int | None:
        """Quarantine an item and its bytes, or release both: every item holding the same bytes,
        now or uploaded or fetched later, follows. None if the item is unknown, else how many
        other items hold those bytes."""
        found = await self.lookup(mxc)
        if found is None:
            return None
        record, local = found
        if quarantined:
            others = await self._store.quarantine(record, local, now_ms())
        else:
            others = await self._store.release(record, local)
        log.info("%s %s (content %s, %d other item(s) with it)", "quarantined" if quarantined else "released",
                 mxc, record.sha256, others)
        return others

    async def delete(self, mxc: str) -> bool:
        found = await self.lookup(mxc)
        if found is None:
            return False
        await self._delete(*found)
        return True

    async def _delete(self, record: MediaRecord, local: bool) -> None:
        await self._store.delete(record, local)
        if record.sha256:
            async with self._sha_lock(record.sha256):
                await self._drop_if_unused(record.sha256)

    async def _drop_if_unused(self, sha256: str) -> None:
        if not await self._store.sha256_in_use(sha256):
            for key in [k for k in self._thumbnail_paths if k[0] == sha256]:
                del self._thumbnail_paths[key]
            await self.files.delete(sha256)

    async def sweep(self) -> int:
        """Drop remote media unused for remote_cache_ttl_s and expired upload slots; returns items dropped."""
        dropped = await self._store.delete_expired_pending(now_ms())
        before = now_ms() - self.config.remote_cache_ttl_s * 1000
        while True:
            batch = await self._store.unused_remote(before)
            for record in batch:
                await self._delete(record, local=False)
            dropped += len(batch)
            if len(batch) < 500:
                return dropped

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.remote_sweep_interval_s)
            try:
                dropped = await self.sweep()
                if dropped:
                    log.info("media sweep dropped %d unused item(s)", dropped)
            except Exception:
                log.exception("media sweep failed; trying again next interval")


def _cached_thumbnail(source: Path, directory: Path, spec: ThumbnailSpec) -> tuple[Path, str] | None:
    """Runs on the thread pool: the thumbnail made earlier (by any process), or None."""
    for content_type, ext in EXTENSIONS.items():
        candidate = directory / f"{spec.file_stem}.{ext}"
        if candidate.is_file():
            return candidate, content_type
    original = directory / f"{spec.file_stem}.original"
    if original.is_file():  # remembers "the original is the answer" and its type
        return source, original.read_text()
    return None


def _cached_or_new_thumbnail(source: Path, directory: Path, spec: ThumbnailSpec, max_pixels: int,
                             max_frames: int) -> tuple[Path, str]:
    """Runs on the thread pool: a cached thumbnail, else make and cache one."""
    cached = _cached_thumbnail(source, directory, spec)
    if cached is not None:
        return cached
    original = directory / f"{spec.file_stem}.original"
    thumb = make_thumbnail(source, spec, max_pixels=max_pixels, max_frames=max_frames)
    directory.mkdir(parents=True, exist_ok=True)
    if thumb.data is None:
        _write_atomically(original, thumb.content_type.encode())
        return source, thumb.content_type
    path = directory / f"{spec.file_stem}.{EXTENSIONS[thumb.content_type]}"
    _write_atomically(path, thumb.data)
    return path, thumb.content_type


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".{time.monotonic_ns()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)

