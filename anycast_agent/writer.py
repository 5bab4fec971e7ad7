"""One writer per PoP (R8): an exclusive `flock` on `state_dir/agent.lock`, held for life.

A second agent on the same state_dir (a copy started by hand, or ExaBGP's SIGUSR2 overlap,
where the old helper is still exiting when the new one starts) must never write a command.
Under ExaBGP the new agent never exits over the lock (each exit counts toward ExaBGP's respawn
limit, after which the whole PoP is withdrawn): it waits, sending nothing, and after
`KILL_AFTER_S` SIGKILLs a holder whose parent is the same ExaBGP (ExaBGP 4.2 waits for its old
helper without a timeout). A copy started by hand exits at once with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from pathlib import Path

from anycast_agent.errors import AgentError

log = logging.getLogger("anycast_agent")

LOCK_FILE = "agent.lock"
KILL_AFTER_S = 3.0
POLL_S = 0.1


class LockBusy(AgentError):
    """Another agent writes for this PoP, and this one was not started by ExaBGP."""


class WriterLock:
    """The lock file; `take()` once, then keep the object (and its descriptor) for life."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)  # the first start makes it
        # O_CLOEXEC: exec probes must not inherit it (a probe outliving the agent would hold
        # the lock for it).
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def take(self) -> bool:
        """Take the lock if it is free (never blocks); the holder's PID is then written in it."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with contextlib.suppress(OSError):  # a full disk: the lock holds, the PID is not shown
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def holder(self) -> int | None:
        """The PID written by the holder (None: unreadable or not written yet)."""
        try:
            return int(os.pread(self.fd, 32, 0).decode().strip())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def started_by_exabgp(ppid: int | None = None) -> bool:
    """Whether this process's parent is ExaBGP: the program it runs is named exabgp
    (`exabgp ...`, `python3 /usr/bin/exabgp ...` or `python -m exabgp ...`), whatever its
    arguments say (`sudo ... --config /etc/exabgp/...` is not ExaBGP)."""
    try:
        cmdline = Path(f"/proc/{ppid or os.getppid()}/cmdline").read_bytes()
    except OSError:
        return False
    argv = cmdline.split(b"\0")
    program = argv[:2] + (argv[2:3] if argv[1:2] == [b"-m"] else [])
    return any(os.path.basename(part).lower().startswith(b"exabgp") for part in program)


def _kill_if(pid: int, parent: int) -> bool:
    """SIGKILL `pid` if it is (still) a child of `parent`; a pidfd pins the process between
    the check and the signal, so a reused PID is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False  # gone already
    try:
        if parent_of(pid) != parent:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


async def own(
    state_dir: Path,
    stop: asyncio.Event,
    *,
    under_exabgp: bool,
    kill_after_s: float = KILL_AFTER_S,
    parent: int | None = None,
) -> WriterLock | None:
    """The lock, once this process holds it; None if `stop` was set first. Raises LockBusy
    when another agent holds it and this one was not started by ExaBGP. `parent` is this
    process's ExaBGP (default: the parent process)."""
    parent = os.getppid() if parent is None else parent
    lock = WriterLock(state_dir / LOCK_FILE)
    if lock.take():
        return lock
    holder = lock.holder()
    who = f"pid {holder}" if holder else "another process"
    if not under_exabgp:
        lock.close()
        raise LockBusy(
            f"another anycast-agent ({who}) holds {lock.path}: one agent writes for a PoP; "
            "stop it first (this copy was not started by ExaBGP, so it exits)"
        )
    log.warning("%s holds %s: waiting for it to exit, sending nothing", who, lock.path)
    since, killed = time.monotonic(), False
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)
        if lock.take():
            waited = time.monotonic() - since
            log.info(
                "writer lock %s taken after %.1fs (previous holder: %s)", lock.path, waited, who
            )
            return lock
        holder = lock.holder() or holder
        late = time.monotonic() - since >= kill_after_s
        if late and not killed and holder and _kill_if(holder, parent):
            log.error(
                "pid %d, the previous agent of this ExaBGP, still held the lock after %.0fs: "
                "SIGKILL",
                holder,
                kill_after_s,
            )
            killed = True
    lock.close()
    return None
