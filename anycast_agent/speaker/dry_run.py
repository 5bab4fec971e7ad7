"""The speaker of `run --dry-run`: prints each command instead of sending it, answers `done`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from anycast_agent.speaker.grammar import Ack, Inbound


class DryRunSpeaker:
    def __init__(self, write: Callable[[str], None]) -> None:
        self.closed = asyncio.Event()
        self.events: asyncio.Queue[Inbound] = asyncio.Queue()
        self._write = write

    async def read_forever(self) -> None:
        await asyncio.Event().wait()

    async def send(self, line: str, *, timeout_s: float | None = None) -> Ack:
        self._write(line)
        return Ack.DONE

    async def show(self, line: str, *, timeout_s: float = 5.0) -> list[str]:
        return []
