"""The command channel to ExaBGP: one line in flight, each answered by an ack before a deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from anycast_agent.errors import SpeakerError
from anycast_agent.speaker.grammar import Ack, Inbound, TextLine, parse_inbound

log = logging.getLogger(__name__)

# The resync barrier: a harmless command whose output starts with a known header line.
BARRIER = "show neighbor summary"
BARRIER_HEADER = "Peer "


class Channel:
    """Writes one command at a time and matches it with ExaBGP's `done`/`error`.

    Stop-and-wait keeps acks unambiguous: ExaBGP 4.2 sends no ack at all for some rejected
    routes, and a pipelined queue would then pair every later ack with the wrong command.
    The reader drains stdin continuously (an unread pipe wedges ExaBGP) and hands every
    non-ack line to the `events` queue.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        write: Callable[[bytes], Awaitable[None]],
        *,
        ack_timeout_s: float = 2.0,
    ) -> None:
        self._reader = reader
        self._write = write
        self.events: asyncio.Queue[Inbound] = asyncio.Queue()
        self.ack_timeout_s = ack_timeout_s
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[Ack] | None = None
        self._output: list[str] | None = None
        self.closed = asyncio.Event()
        self.sent = 0
        self.acked: dict[Ack | None, int] = {}
        self._desynced = False
        self._barrier: str | None = None  # the header line that ends a resync's late acks
        self._barrier_seen = False

    async def read_forever(self) -> None:
        """Read until EOF; then set `closed` (ExaBGP is gone or stopping)."""
        skipping = False  # the rest of an overlong line is still to come
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except ValueError as exc:  # longer than the reader's limit (1 MiB): drop it
                    log.warning("skipped a line over the limit from ExaBGP")
                    # asyncio dropped the line whole if its end had arrived, else what came.
                    skipping = "not found" in str(exc)
                    continue
                if not line:
                    break
                if skipping:
                    skipping = not line.endswith(b"\n")
                    continue
                self._dispatch(parse_inbound(line.decode("utf-8", "replace")))
        finally:
            self.closed.set()
            if self._pending is not None and not self._pending.done():
                self._pending.set_exception(SpeakerError("(pending command)", "EOF on stdin"))

    def _dispatch(self, item: Inbound) -> None:
        if isinstance(item, Ack):
            if self._barrier is not None and not self._barrier_seen:
                log.warning(
                    "discarding a late %r (the ack of a command that timed out)", item.value
                )
                return
            if self._pending is not None and not self._pending.done():
                self._pending.set_result(item)
            else:
                log.warning(
                    "ExaBGP sent %r with no command waiting for it (a late ack)", item.value
                )
            return
        if isinstance(item, TextLine) and self._barrier is not None:
            self._barrier_seen = self._barrier_seen or item.text.startswith(self._barrier)
            return
        if isinstance(item, TextLine) and self._output is not None:
            self._output.append(item.text)
            return
        self.events.put_nowait(item)

    async def send(self, line: str, *, timeout_s: float | None = None) -> Ack:
        """Write one command and wait for its ack; SpeakerError when none comes in time."""
        async with self._lock:
            return await self._exchange(line, timeout_s or self.ack_timeout_s)

    async def show(self, line: str, *, timeout_s: float = 5.0) -> list[str]:
        """Run a `show` command and return its output lines."""
        async with self._lock:
            self._output = []
            try:
                ack = await self._exchange(line, timeout_s)
                if ack is not Ack.DONE:
                    raise SpeakerError(line, ack.value)
                return self._output
            finally:
                self._output = None

    async def _exchange(self, line: str, timeout_s: float) -> Ack:
        if self._desynced:
            await self._resync(timeout_s)
        try:
            return await self._exchange_once(line, timeout_s)
        except SpeakerError:
            self._desynced = True
            raise

    async def _resync(self, timeout_s: float) -> None:
        """After a command went unanswered, its ack may still come and would be taken for the
        next command's. A barrier re-aligns: `show neighbor summary` always prints its header
        line before its own `done`, so every ack before that header is a late one."""
        self._barrier, self._barrier_seen = BARRIER_HEADER, False
        try:
            ack = await self._exchange_once(BARRIER, timeout_s)
        finally:
            seen, self._barrier = self._barrier_seen, None
        if ack is not Ack.DONE or not seen:
            raise SpeakerError(BARRIER, f"{ack.value} without its header: still out of step")
        self._desynced = False
        log.info("command channel back in step with ExaBGP")

    async def _exchange_once(self, line: str, timeout_s: float) -> Ack:
        if self.closed.is_set():
            raise SpeakerError(line, "the channel is closed (stdin EOF)")
        self._pending = asyncio.get_running_loop().create_future()
        try:
            await self._write(line.encode("ascii") + b"\n")
            self.sent += 1
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that lands
            # together with the ack (seen here: SIGTERM right after an ack never stopped).
            async with asyncio.timeout(timeout_s):
                ack = await self._pending
        except TimeoutError:
            self.acked[None] = self.acked.get(None, 0) + 1
            raise SpeakerError(line, f"no ack within {timeout_s:g}s") from None
        finally:
            self._pending = None
        self.acked[ack] = self.acked.get(ack, 0) + 1
        return ack
