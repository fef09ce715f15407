"""Where the server process's log lines go: stderr, in batches.

A request's access-log line cost about 42 us through a plain StreamHandler (on the 2-core machines
of bench/), as much as answering a small /sync: the record looked up its caller's frame, thread
and process, the time was formatted from scratch, and every line was its own write. Here records
skip those lookups, the second is formatted once, and lines are held for at most FLUSH_INTERVAL_S
(or BUFFERED_RECORDS of them) and written together: about 21 us. A warning or worse is written at
once, with everything before it, so the order of lines is kept and nothing that matters waits.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import time

LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BUFFERED_RECORDS = 512
FLUSH_INTERVAL_S = 0.5


class _Formatter(logging.Formatter):
    """logging's default time format ("2026-12-02 04:13:12,345"), its date part made once a second."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._text},{int(record.msecs):03d}"


def configure(level: str) -> logging.handlers.MemoryHandler:
    """Set up the process's logging (the server's entry point calls this once); the buffer to flush."""
    # Process-wide switches of the logging module: records no longer carry the caller's file and
    # line, thread or process, which these logs never print.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stream = logging.StreamHandler()
    stream.setFormatter(_Formatter(LINE_FORMAT))
    buffer = logging.handlers.MemoryHandler(BUFFERED_RECORDS, logging.WARNING, stream)
    logging.basicConfig(level=level.upper(), handlers=[buffer])
    return buffer


async def flush_periodically(buffer: logging.Handler) -> None:
    """Write held lines every FLUSH_INTERVAL_S until cancelled, then once more."""
    try:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            buffer.flush()
    finally:
        buffer.flush()
