"""The process's stdin/stdout as ExaBGP's API pipes: an async reader and a flushed line writer."""

from __future__ import annotations

import asyncio
import os
import sys


async def open_stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def write_stdout(data: bytes) -> None:
    """Write straight to fd 1: no buffer can hold a command back.

    A blocking write is deliberate: if ExaBGP stops reading, the agent stops too, the
    watchdog stops being fed, and the hang ends in a restart (fail-closed).
    """
    view = memoryview(data)
    while view:
        written = os.write(sys.stdout.fileno(), view)
        view = view[written:]
