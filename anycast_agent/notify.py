"""The sd_notify client: readiness, status, and a watchdog fed only while the agent progresses."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"


@dataclass(frozen=True)
class Watchdog:
    """What systemd (or `anycast-agent supervise`) expects: a ping at least every `timeout_s`.

    Pings go out every `interval_s` (half the timeout, as sd_watchdog_enabled(3) advises), and
    only while the agent recorded progress within `stall_after_s`.
    """

    timeout_s: float
    interval_s: float
    stall_after_s: float


@dataclass
class Notifier:
    """Built once from the environment; a notifier without a socket does nothing.

    WATCHDOG_PID is deliberately not compared with our PID: under the unit, ExaBGP is the main
    process, it passes its environment through to the agent it starts, so WATCHDOG_PID names
    ExaBGP, never the agent. NotifyAccess=all is what lets systemd accept the agent's datagrams.
    """

    address: str | None
    watchdog: Watchdog | None
    _sock: socket.socket | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], stall_after_s: float | None = None) -> Notifier:
        """`stall_after_s`: how old the last progress may be for a ping to go out (default: the
        watchdog timeout itself, so a stall ends in a kill between one and two timeouts later)."""
        raw = environ.get(NOTIFY_SOCKET, "")
        address = raw or None
        if address is not None and not address.startswith(("/", "@")):
            log.warning(
                "%s=%r is neither a path nor @abstract: notifications off", NOTIFY_SOCKET, raw
            )
            address = None
        watchdog = None
        usec_text = environ.get(WATCHDOG_USEC, "")
        if address is not None and usec_text:
            try:
                usec = int(usec_text)
            except ValueError:
                usec = 0
            if usec > 0:
                timeout_s = usec / 1_000_000
                watchdog = Watchdog(
                    timeout_s=timeout_s,
                    interval_s=timeout_s / 2,
                    stall_after_s=stall_after_s if stall_after_s is not None else timeout_s,
                )
            else:
                log.warning(
                    "%s=%r is not a positive integer: watchdog off", WATCHDOG_USEC, usec_text
                )
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines; returns whether it went out. Never raises:
        a service manager that went away must not take the agent with it."""
        if self.address is None:
            return False
        if any("\n" in a for a in assignments):
            raise ValueError(f"a notification line cannot contain a newline: {assignments!r}")
        # Linux abstract socket: '@name' on the wire is a leading NUL byte.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                # Python sockets are close-on-exec: exec probes never inherit this one.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(assignments).encode(), target)
        except OSError as exc:
            log.warning("cannot notify %s (%s): %s", self.address, assignments[0], exc)
            return False
        return True

    def allow_periods(self, slowest_s: float) -> None:
        """Never stop pinging before the slowest probe period (plus its timeout) has passed, so
        a slow but healthy schedule is not mistaken for a hang; set again after each reload."""
        if self.watchdog is not None:
            limit = max(self.watchdog.timeout_s, slowest_s)
            self.watchdog = replace(self.watchdog, stall_after_s=limit)

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        # STATUS is one line; an operator reason could carry anything.
        return self.notify("STATUS=" + " ".join(text.split()))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def ping(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def watchdog_loop(
        self, progress: Callable[[], float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Every interval, ping if `clock() - progress() < stall_after_s`; returns at once when
        there is no watchdog. `progress()` is the monotonic time of the agent's last probe round
        and decision step: a loop stuck anywhere stops the pings, while this task, running on
        the same event loop, shows the loop itself is alive."""
        wd = self.watchdog
        if wd is None:
            return
        stalled = False
        while True:
            age_s = clock() - progress()
            if age_s < wd.stall_after_s:
                if stalled:
                    log.warning("agent progressing again: watchdog pings resumed")
                    stalled = False
                self.ping()
            elif not stalled:
                stalled = True
                log.error(
                    "no probe/decision progress for %.1fs (limit %.1fs): watchdog pings stopped,"
                    " the service manager will restart ExaBGP within %.1fs",
                    age_s,
                    wd.stall_after_s,
                    wd.timeout_s,
                )
            await asyncio.sleep(wd.interval_s)
