"""The exec probe: run a check command in its own process group; exit status 0 means healthy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from anycast_agent.config import ExecCheck
from anycast_agent.model import ProbeResult
from anycast_agent.probes.base import checker_fault, timeout_reason

log = logging.getLogger(__name__)

# A check command must never feed or stop the systemd watchdog, notify readiness, or take over
# socket-activated fds meant for the agent (WATCHDOG_PID names ExaBGP, the unit's main PID).
SYSTEMD_VARS = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
# The end of stderr kept for the failure reason: enough for the last line of a message.
STDERR_TAIL = 512
REASON_DETAIL = 200


def probe_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment without anything that lets a check talk to systemd."""
    return {k: v for k, v in environ.items() if k not in SYSTEMD_VARS}


def ambient_caps_prefix(status_path: Path = Path("/proc/self/status")) -> tuple[str, ...]:
    """An argv prefix that clears the ambient capability set in the child, or () when the agent
    has none to pass on (the usual case: then nothing is wrapped)."""
    try:
        fields = dict(
            line.split(":", 1) for line in status_path.read_text().splitlines() if ":" in line
        )
        ambient = int(fields.get("CapAmb", "0").strip(), 16)
    except (OSError, ValueError):
        return ()
    if not ambient:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning(
            "the agent holds ambient capabilities %#x and setpriv is not installed: "
            "exec probes inherit them",
            ambient,
        )
        return ()
    return (setpriv, "--ambient-caps", "-all", "--")


class ExecProbe:
    """Spawn argv (no shell) with stdin/stdout on /dev/null and the tail of stderr kept for the
    reason; on timeout the whole process group is killed and reaped."""

    __slots__ = ("_argv", "_env", "_name", "_timeout_s")

    def __init__(
        self,
        check: ExecCheck,
        timeout_s: float,
        env: Mapping[str, str],
        argv_prefix: tuple[str, ...] = (),
    ) -> None:
        self._argv = (*argv_prefix, *check.argv)
        self._name = check.argv[0]
        self._env = dict(env)
        self._timeout_s = timeout_s

    async def check(self) -> ProbeResult:
        start = time.monotonic()
        # stderr goes to a pipe we drain ourselves: asyncio's own pipes would make wait() also
        # wait for EOF, which a grandchild that keeps stderr open could postpone for ever.
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            return ProbeResult(
                ok=False,
                latency_s=time.monotonic() - start,
                reason=f"cannot run {self._name!r}: {exc.strerror or exc}",
                checker=checker_fault(exc, spawn=True),
            )
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=write_fd,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            return ProbeResult(
                ok=False,
                latency_s=time.monotonic() - start,
                reason=f"cannot run {self._name!r}: {exc.strerror or exc}",
                checker=checker_fault(exc, spawn=True),
            )
        finally:
            os.close(write_fd)
        tail = _Tail(read_fd)
        try:
            async with asyncio.timeout(self._timeout_s):
                returncode = await proc.wait()
        except TimeoutError:
            await _kill_group(proc)
            return ProbeResult(
                ok=False,
                latency_s=time.monotonic() - start,
                reason=timeout_reason(self._timeout_s),
            )
        except asyncio.CancelledError:
            await _kill_group(proc)
            raise
        finally:
            detail = tail.close()
        latency_s = time.monotonic() - start
        if returncode == 0:
            return ProbeResult(ok=True, latency_s=latency_s)
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:  # a real-time signal has no name
                name = f"signal {-returncode}"
            reason = f"{self._name} killed by {name}"
        else:
            reason = f"{self._name} exit status {returncode}"
        return ProbeResult(
            ok=False, latency_s=latency_s, reason=f"{reason}: {detail}" if detail else reason
        )


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # start_new_session made the child a group leader: its pid is the group id, and Linux does
    # not hand out a pid again while a group of that id exists, so this hits only the check's
    # tree (the leader, and whatever it started in the background).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class _Tail:
    """Drains a pipe as data arrives, keeping only its last STDERR_TAIL bytes."""

    __slots__ = ("_buf", "_fd", "_loop")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._drain)

    def _drain(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                self._buf = (self._buf + chunk)[-STDERR_TAIL:]
                if len(chunk) < 65536:
                    break
            else:  # EOF: every writer closed its end
                self._loop.remove_reader(self._fd)
        except BlockingIOError:
            pass

    def close(self) -> str:
        """Take what is still buffered in the pipe, stop watching it, and return the last
        non-empty line, printable and bounded."""
        self._drain()
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        lines = self._buf.decode("utf-8", "replace").strip().splitlines()
        if not lines:
            return ""
        last = "".join(c if c.isprintable() else "?" for c in lines[-1].strip())
        return last if len(last) <= REASON_DETAIL else last[: REASON_DETAIL - 1] + "…"
