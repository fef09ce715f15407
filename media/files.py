"""Media bytes on local disk, content-addressed: the same bytes uploaded twice are one file.

Layout under the media directory:
    files/ab/cd/<sha256>                     the media itself
    thumbnails/ab/cd/<sha256>/<name>         thumbnails of it, shared by every item with those bytes
    tmp/                                     uploads in progress, renamed into files/ when complete

File system calls run on the thread pool so a slow disk never stalls the event loop; bytes are
written in batches of WRITE_BATCH so a 100 MB upload needs ~100 hand-offs and ~1 MB of memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, AsyncIterable, Callable

WRITE_BATCH = 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size: int


@dataclass(frozen=True)
class WrittenFile:
    """Bytes fully written to a temporary file, not yet in the store (`commit` or `discard` it)."""
    tmp: Path
    stored: StoredFile


class MediaFiles:
    def __init__(self, root: Path, executor: Executor) -> None:
        self.root = root
        self._executor = executor
        self._files = root / "files"
        self._thumbnails = root / "thumbnails"
        self._tmp = root / "tmp"
        for d in (self._files, self._thumbnails, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self._files / sha256[:2] / sha256[2:4] / sha256

    def thumbnail_dir(self, sha256: str) -> Path:
        return self._thumbnails / sha256[:2] / sha256[2:4] / sha256

    async def run(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def write_stream(self, chunks: AsyncIterable[bytes], max_bytes: int,
                           too_large: Callable[[], Exception]) -> WrittenFile:
        """Stream `chunks` to a temporary file; `too_large()` is raised as soon as they pass `max_bytes`."""
        tmp = self._tmp / uuid.uuid4().hex
        fh: IO[bytes] = await self.run(open, tmp, "wb")  # type: ignore[assignment]
        hasher = hashlib.sha256()
        size = pending = 0
        batch: list[bytes] = []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise too_large()
                batch.append(chunk)
                pending += len(chunk)
                if pending >= WRITE_BATCH:
                    await self.run(_write, fh, hasher, batch)
                    batch, pending = [], 0
            if batch:
                await self.run(_write, fh, hasher, batch)
            await self.run(fh.close)
            return WrittenFile(tmp, StoredFile(hasher.hexdigest(), size))
        except BaseException:
            await self.run(_discard, fh, tmp)
            raise

    async def commit(self, written: WrittenFile) -> StoredFile:
        """Move the bytes into place (or drop them when the same bytes are stored already)."""
        await self.run(_move_into_place, written.tmp, self.path(written.stored.sha256))
        return written.stored

    async def discard(self, written: WrittenFile) -> None:
        await self.run(_unlink, written.tmp)

    async def delete(self, sha256: str) -> None:
        """Remove the file and its thumbnails (the caller checked nothing names them any more)."""
        await self.run(_delete_quietly, self.path(sha256), self.thumbnail_dir(sha256))

    async def exists(self, sha256: str) -> bool:
        return bool(await self.run(self.path(sha256).is_file))


def _write(fh: IO[bytes], hasher: "hashlib._Hash", chunks: list[bytes]) -> None:
    for chunk in chunks:  # no joining: every copy of 100 MB costs
        hasher.update(chunk)  # hashlib drops the GIL for large buffers
        fh.write(chunk)


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.exists():
        tmp.unlink()  # the same bytes are stored already
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)


def _discard(fh: IO[bytes], tmp: Path) -> None:
    fh.close()
    tmp.unlink(missing_ok=True)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _delete_quietly(path: Path, thumbnails: Path) -> None:
    path.unlink(missing_ok=True)
    shutil.rmtree(thumbnails, ignore_errors=True)
