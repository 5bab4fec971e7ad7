"""ExaBGP 4.2 / 5.0 in the PoP namespace: binary lookup, environment, config, lifecycle."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from tests.lab.description import Family
from tests.lab.netns import Netns
from tests.lab.processes import signal_pid, terminate
from tests.lab.wait import wait_for

ExabgpVersion = Literal["4.2", "5.0"]
EXABGP_VERSIONS: tuple[ExabgpVersion, ...] = get_args(ExabgpVersion)

REPO_ROOT = Path(__file__).resolve().parents[2]
_BINARY_ENV: dict[ExabgpVersion, str] = {
    "4.2": "ANYCAST_TEST_EXABGP_42",
    "5.0": "ANYCAST_TEST_EXABGP_50",
}
_BINARY_DEFAULT: dict[ExabgpVersion, Path] = {
    "4.2": REPO_ROOT / ".venv-exabgp42" / "bin" / "exabgp",
    "5.0": REPO_ROOT / ".venv" / "bin" / "exabgp",
}

# Both versions read `exabgp.section.option` or `exabgp_section_option` from the environment;
# the underscore spelling survives shells and systemd Environment= lines.
LAB_ENV: dict[str, str] = {
    # ExaBGP otherwise drops to `nobody` before starting the API process.
    "exabgp_daemon_user": "root",
    "exabgp_daemon_daemonize": "false",
    "exabgp_daemon_pid": "",
    "exabgp_api_ack": "true",
    # The CLI pipes/socket live at fixed paths: parallel labs would share them.
    "exabgp_api_cli": "false",
    # 4.2 ignores this at start-up and logs to stdout anyway; 5.0 honours it.
    "exabgp_log_destination": "stderr",
    # Never listen: the upstream never dials in, and nothing may squat port 179 by accident.
    "exabgp_tcp_bind": "",
}


def exabgp_binary(version: ExabgpVersion) -> Path:
    """ANYCAST_TEST_EXABGP_42 / _50 if set, else the repo's venv (which may not exist)."""
    if version not in _BINARY_ENV:
        raise ValueError(f"unknown ExaBGP version {version!r}; want one of {EXABGP_VERSIONS}")
    override = os.environ.get(_BINARY_ENV[version])
    return Path(override) if override else _BINARY_DEFAULT[version]


def binary_env_var(version: ExabgpVersion) -> str:
    return _BINARY_ENV[version]


def exabgp_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The lab's environment for ExaBGP and, through inheritance, its API processes.

    PYTHONUNBUFFERED is dropped (this machine sets it) so an API process that forgets to flush
    fails in tests as it would in production; inherited ExaBGP settings are dropped so the
    outer shell cannot change the lab.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONUNBUFFERED" and not k.lower().startswith(("exabgp.", "exabgp_"))
    }
    env.update(LAB_ENV)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class ExabgpProcess:
    name: str
    argv: tuple[str, ...]
    encoder: Literal["json", "text"] = "json"


@dataclass(frozen=True)
class ExabgpNeighbor:
    """A neighbor block; 4.2 insists on local-address, and hold-time is 0 or >= 3."""

    peer_address: str
    local_address: str
    router_id: str
    local_as: int
    peer_as: int
    families: tuple[Family, ...] = ("ipv4",)
    hold_time_s: int = 3
    processes: tuple[str, ...] = ()
    neighbor_changes: bool = True


_SAFE_WORD = re.compile(r"^[^\s;{}\[\]'\"]+$")


def render_exabgp_conf(
    neighbors: Sequence[ExabgpNeighbor], processes: Sequence[ExabgpProcess] = ()
) -> str:
    for proc in processes:
        bad = [a for a in proc.argv if not _SAFE_WORD.match(a)]
        if bad:
            raise ValueError(f"ExaBGP `run` cannot quote these arguments: {bad}")
    for n in neighbors:
        if 0 < n.hold_time_s < 3:
            raise ValueError(f"hold-time {n.hold_time_s} for {n.peer_address}: must be 0 or >= 3")
    out: list[str] = []
    for proc in processes:
        out += [
            f"process {proc.name} {{",
            f"  run {' '.join(proc.argv)};",
            f"  encoder {proc.encoder};",
            "}",
            "",
        ]
    for n in neighbors:
        out += [
            f"neighbor {n.peer_address} {{",
            f"  router-id {n.router_id};",
            f"  local-address {n.local_address};",
            f"  local-as {n.local_as};",
            f"  peer-as {n.peer_as};",
            f"  hold-time {n.hold_time_s};",
            "  family {",
            *(f"    {fam} unicast;" for fam in n.families),
            "  }",
        ]
        if n.processes:
            changes = " neighbor-changes;" if n.neighbor_changes else ""
            out.append(f"  api {{ processes [ {' '.join(n.processes)} ];{changes} }}")
        out += ["}", ""]
    return "\n".join(out)


class Exabgp:
    """One ExaBGP run; stdout and stderr land in files in the lab's work dir."""

    def __init__(
        self,
        netns: Netns,
        version: ExabgpVersion,
        config_path: Path,
        workdir: Path,
        name: str = "exabgp",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.netns = netns
        self.version = version
        self.binary = exabgp_binary(version)
        self.config_path = config_path
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.env = exabgp_env(extra_env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.lost_sigterms = 0

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"ExaBGP already running as pid {self.pid}")
        self.proc = self.netns.popen(
            [str(self.binary), str(self.config_path)],
            env=self.env,
            stdout_path=self.stdout_path,
            stderr_path=self.stderr_path,
            cwd=self.config_path.parent,
        )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("ExaBGP was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def send_signal(self, sig: signal.Signals) -> None:
        signal_pid(self.pid, sig)

    def stop(self, grace_s: float = 5.0, resend_s: float = 1.0) -> int:
        """SIGTERM and wait: ExaBGP closes its sessions, kills its API processes after ~2 s.

        SIGTERM is repeated every `resend_s`: 5.0's handler logs from inside the signal
        handler, and when that lands in the middle of another stderr write it dies with
        "reentrant call" and the signal is lost (seen when BIRD's Cease arrived at once).
        `lost_sigterms` counts the repeats that were needed. SIGKILL after `grace_s`.
        """
        if self.proc is None:
            raise RuntimeError("ExaBGP was never started")
        deadline = time.monotonic() + grace_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            signal_pid(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout=min(resend_s, max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.lost_sigterms += 1
        return terminate(self.proc, grace_s=0.0)

    def kill9(self) -> int:
        if self.proc is None:
            raise RuntimeError("ExaBGP was never started")
        signal_pid(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()

    def log_text(self) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_log(self, pattern: str, timeout_s: float = 5.0) -> float:
        """Wait until a log line (stdout or stderr, either version) matches `pattern`."""
        regex = re.compile(pattern)
        return wait_for(
            lambda: bool(regex.search(self.log_text())),
            timeout_s=timeout_s,
            what=f"ExaBGP log matching {pattern!r}",
        )
