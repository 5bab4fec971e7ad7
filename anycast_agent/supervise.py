"""`anycast-agent supervise`: the systemd watchdog for ExaBGP where no systemd runs (labs, images).

It starts the command (ExaBGP) with NOTIFY_SOCKET naming its own datagram socket and
WATCHDOG_USEC set, so the agent ExaBGP runs notifies it exactly as it would notify systemd.
A missed watchdog deadline (or no READY=1 within the start timeout) SIGKILLs the whole process
tree: ExaBGP's sockets close, the peers drop every route (fail closed, DESIGN §1).

ExaBGP puts each API process in its own process group (setpgrp), so killing ExaBGP's group
would miss the agent: the supervisor is a child subreaper instead and kills every descendant.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from anycast_agent import logs

log = logging.getLogger("anycast_agent.supervise")

# The child was killed for a missed deadline (sysexits EX_SOFTWARE).
EXIT_WATCHDOG = 70
EXIT_USAGE = 2
PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class Options:
    watchdog_s: float
    start_timeout_s: float
    stop_timeout_s: float
    command: tuple[str, ...]


def parse(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="anycast-agent supervise",
        description="Run ExaBGP (and through it the agent) under a watchdog: kill it when the "
        "agent stops sending WATCHDOG=1.",
    )
    p.add_argument("--watchdog-sec", type=float, required=True, help="systemd's WatchdogSec=")
    p.add_argument(
        "--start-timeout-sec",
        type=float,
        default=60.0,
        help="how long READY=1 may take (default: %(default)s)",
    )
    p.add_argument(
        "--stop-timeout-sec",
        type=float,
        default=10.0,
        help="after SIGTERM, how long until everything left is SIGKILLed (default: %(default)s)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- exabgp CONF...")
    args = p.parse_args(list(argv))
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        p.error("a command to run is required: supervise --watchdog-sec N -- exabgp CONF")
    for name in ("watchdog_sec", "start_timeout_sec", "stop_timeout_sec"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return Options(args.watchdog_sec, args.start_timeout_sec, args.stop_timeout_sec, tuple(command))


def main(argv: Sequence[str] | None = None) -> int:
    """`anycast-agent supervise ...` (argv without the subcommand); returns the exit status."""
    options = parse(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logs.setup()
    workdir = Path(tempfile.mkdtemp(prefix="anycast-supervise-"))  # mode 0700
    try:
        return Supervisor(options, workdir / "notify.sock").run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class Supervisor:
    def __init__(self, options: Options, socket_path: Path) -> None:
        self.options = options
        self.socket_path = socket_path
        self.child: subprocess.Popen[bytes] | None = None
        self.child_status: int | None = None
        self.ready = False
        self.stopping = False
        self.deadline = 0.0
        self.pending: list[int] = []

    def run(self) -> int:
        _become_subreaper()
        sel = selectors.DefaultSelector()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(self.socket_path))
        notify.setblocking(False)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        handled = (*FORWARDED, signal.SIGCHLD, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            sel.register(notify, selectors.EVENT_READ)
            sel.register(wake_r, selectors.EVENT_READ)
            self._spawn()
            return self._loop(sel, notify, wake_r)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_wakeup)
            sel.close()
            for s in (notify, wake_r, wake_w):
                s.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    def _spawn(self) -> None:
        env = dict(os.environ)
        env.pop("WATCHDOG_PID", None)
        env["NOTIFY_SOCKET"] = str(self.socket_path)
        env["WATCHDOG_USEC"] = str(round(self.options.watchdog_s * 1_000_000))
        # Its own session: a terminal's Ctrl-C reaches us, and we decide what ExaBGP gets.
        self.child = subprocess.Popen(self.options.command, env=env, start_new_session=True)
        self.deadline = time.monotonic() + self.options.start_timeout_s
        log.info(
            "supervise: started %s as pid %d (watchdog %.1fs, start timeout %.1fs)",
            self.options.command[0],
            self.child.pid,
            self.options.watchdog_s,
            self.options.start_timeout_s,
        )

    def _loop(self, sel: selectors.BaseSelector, notify: socket.socket, wake: socket.socket) -> int:
        assert self.child is not None
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                return self._deadline_passed()
            sel.select(self.deadline - now)
            with contextlib.suppress(BlockingIOError):
                while wake.recv(4096):
                    pass
            self._read_notifications(notify)
            if self.deadline == 0.0:  # WATCHDOG=trigger
                return self._deadline_passed()
            self._handle_signals()
            self._reap()
            if self.child_status is not None:
                self._kill_tree(signal.SIGKILL)  # what ExaBGP left behind (KillMode=mixed)
                code = _exit_code(self.child_status)
                log.info("supervise: %s exited with status %d", self.options.command[0], code)
                return code

    def _read_notifications(self, notify: socket.socket) -> None:
        while True:
            try:
                data = notify.recv(4096)
            except BlockingIOError:
                return
            for line in data.decode(errors="replace").splitlines():
                self._notification(line)

    def _notification(self, line: str) -> None:
        now = time.monotonic()
        key, _, value = line.partition("=")
        match key, value:
            case "READY", "1":
                if not self.ready:
                    log.info("supervise: READY=1 received")
                self.ready = True
                if not self.stopping:
                    self.deadline = now + self.options.watchdog_s
            case "WATCHDOG", "1":
                if self.ready and not self.stopping:
                    self.deadline = now + self.options.watchdog_s
            case "WATCHDOG", "trigger":
                log.error("supervise: WATCHDOG=trigger received")
                self.deadline = 0.0
            case "STOPPING", "1":
                log.info("supervise: STOPPING=1")
            case "STATUS", text:
                log.info("supervise: status: %s", text)
            case _:
                log.debug("supervise: ignored notification %r", line)

    def _handle_signals(self) -> None:
        assert self.child is not None
        while self.pending:
            sig = signal.Signals(self.pending.pop(0))
            if sig is signal.SIGCHLD:
                continue
            if sig is signal.SIGHUP:
                # SIGHUP shuts ExaBGP down (DESIGN §3.6): never pass it on.
                log.warning("supervise: SIGHUP ignored (it would stop ExaBGP); reload the agent")
                continue
            if self.child_status is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child.pid, sig)
            if sig in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                log.info("supervise: %s: stopping %s", sig.name, self.options.command[0])
                self.stopping = True
                self.deadline = time.monotonic() + self.options.stop_timeout_s

    def _reap(self) -> None:
        # As subreaper we also inherit ExaBGP's orphans: reap every child, note the main one.
        assert self.child is not None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child.pid:
                self.child_status = status
                self.child.returncode = _exit_code(status)  # so Popen never waits for it again

    def _deadline_passed(self) -> int:
        name = self.options.command[0]
        if self.stopping:
            log.error(
                "supervise: %s still running %.1fs after SIGTERM: SIGKILL",
                name,
                self.options.stop_timeout_s,
            )
            self._kill_tree(signal.SIGKILL)
            return _exit_code(self.child_status) if self.child_status is not None else 128 + 9
        if self.ready:
            what = f"no WATCHDOG=1 within {self.options.watchdog_s:.1f}s"
        else:
            what = f"no READY=1 within {self.options.start_timeout_s:.1f}s"
        log.critical("supervise: %s: killing %s and everything it started", what, name)
        self._kill_tree(signal.SIGKILL)
        return EXIT_WATCHDOG

    def _kill_tree(self, sig: signal.Signals) -> None:
        deadline = time.monotonic() + KILL_GRACE_S
        while True:
            self._reap()
            pids = descendants(os.getpid())
            if not pids:
                return
            if time.monotonic() >= deadline:
                log.error("supervise: processes %s survived %s", sorted(pids), sig.name)
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.01)  # let the kernel deliver the kills before reaping


def descendants(root: int) -> set[int]:
    """Every live process below `root`, from /proc (zombies included, so they get reaped)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        log.warning("supervise: cannot become a subreaper (%s)", os.strerror(err))


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
