"""Tracks every process the lab starts so teardown can end each one by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TERM_GRACE_S = 2.0


class ProcessRegistry:
    """Owns the lab's child processes; `terminate_all` is SIGTERM, a deadline, then SIGKILL."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdout_path: Path | None = None,
        stderr_path: Path | None = None,
        **popen_kw: Any,
    ) -> subprocess.Popen[bytes]:
        """Start and record a process; output given as paths is appended to those files."""
        popen_kw.setdefault("stdin", subprocess.DEVNULL)
        # A new session keeps the test runner's Ctrl-C away from the daemons, so teardown
        # (not a stray SIGINT) decides how they end.
        popen_kw.setdefault("start_new_session", True)
        with contextlib.ExitStack() as stack:
            if stdout_path is not None:
                popen_kw["stdout"] = stack.enter_context(stdout_path.open("ab"))
            if stderr_path is not None:
                popen_kw["stderr"] = stack.enter_context(stderr_path.open("ab"))
            proc: subprocess.Popen[bytes] = subprocess.Popen(list(argv), **popen_kw)
        self._procs.append(proc)
        return proc

    @property
    def processes(self) -> tuple[subprocess.Popen[bytes], ...]:
        return tuple(self._procs)

    def terminate_all(self, grace_s: float = TERM_GRACE_S) -> list[str]:
        """End every recorded process, newest first (clients before the daemons they talk
        to, so no daemon sees its peers vanish while it is being stopped); return a note
        per process that needed SIGKILL."""
        notes: list[str] = []
        for proc in reversed(self._procs):
            if proc.poll() is not None:
                continue
            stop_gently(proc.pid)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                notes.append(f"pid {proc.pid} ({describe(proc)}) ignored SIGTERM; sent SIGKILL")
                signal_pid(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()
        return notes


def terminate(proc: subprocess.Popen[bytes], grace_s: float = TERM_GRACE_S) -> int:
    """SIGTERM one process, SIGKILL it if it outlives `grace_s`; return its exit status."""
    if proc.poll() is None:
        stop_gently(proc.pid)
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            signal_pid(proc.pid, signal.SIGKILL)
    return proc.wait()


def stop_gently(pid: int) -> None:
    signal_pid(pid, signal.SIGTERM)
    # A test may have left it SIGSTOPped; SIGTERM would stay pending until the SIGKILL.
    signal_pid(pid, signal.SIGCONT)


def signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def describe(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args
    if isinstance(args, (list, tuple)):
        return " ".join(str(a) for a in args[:8])
    return str(args)
