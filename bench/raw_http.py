"""A bare keep-alive HTTP/1.1 connection for rate phases, where the load client must cost far less
than the server it measures (on a 2-core machine, aiohttp's client costs about as much CPU per
request as Whispr spends answering a small one, so it would cap the rate it reports).

One request at a time per connection; answers framed by Content-Length or chunked encoding; the
body is returned unparsed. Nothing here is specific to either server.
"""

from __future__ import annotations

import asyncio
import urllib.parse


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader, self._writer, self._host = reader, writer, host

    @classmethod
    async def open(cls, base_url: str) -> RawConnection:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"plain http only: {base_url}")
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
        return cls(reader, writer, url.netloc)

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length, chunked = 0, False
        while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            return status, await self._reader.readexactly(length)
        parts = []
        while (size := int((await self._reader.readline()).split(b";")[0], 16)) > 0:
            parts.append(await self._reader.readexactly(size))
            await self._reader.readline()
        while (await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return status, b"".join(parts)

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
