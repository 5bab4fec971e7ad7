"""A bench namespace (`aab-…`) and the processes started in it, all removed on exit."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

NAME_PREFIX = "aab-"
TERM_GRACE_S = 3.0
COMMAND_TIMEOUT_S = 30.0
# Every namespace this process created, so a run can say which were its own (another bench on
# the same machine uses the same prefix).
CREATED: list[str] = []


def run(argv: Sequence[str], *, input_text: str | None = None) -> str:
    """Run a setup command; raise with what it said when it fails."""
    proc = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)!r} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class Sandbox:
    """One network namespace with loopback up; owns every process it starts (ended by PID)."""

    def __init__(self, role: str) -> None:
        self.name = f"{NAME_PREFIX}{role}-{secrets.token_hex(2)}"
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        run(["ip", "netns", "add", self.name])
        CREATED.append(self.name)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            run(["ip", "netns", "del", self.name])
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            run(["ip", "netns", "del", self.name])

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args])

    def batch(self, lines: Sequence[str]) -> None:
        """Many `ip` commands in one process (adding thousands of addresses one by one is slow)."""
        run(["ip", "-n", self.name, "-batch", "-"], input_text="\n".join(lines) + "\n")

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdout: Path | int | None = subprocess.DEVNULL,
        stderr: Path | int | None = subprocess.DEVNULL,
        stdin: int | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start argv inside the namespace (`ip netns exec` execs it: the PID is argv's own)."""
        with contextlib.ExitStack() as stack:
            out: IO[bytes] | int | None = (
                stack.enter_context(stdout.open("ab")) if isinstance(stdout, Path) else stdout
            )
            err: IO[bytes] | int | None = (
                stack.enter_context(stderr.open("ab")) if isinstance(stderr, Path) else stderr
            )
            kw: dict[str, Any] = {"env": env} if env is not None else {}
            proc = subprocess.Popen(
                self.argv(argv),
                stdin=stdin,
                stdout=out,
                stderr=err,
                start_new_session=True,
                **kw,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        """Signal one process we started, wait `TERM_GRACE_S`, then SIGKILL; its exit status."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                return proc.wait(TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        return proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            self.stop(proc)
        self._procs.clear()
