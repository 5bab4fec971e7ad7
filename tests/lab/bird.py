"""BIRD 2 as the upstream's BGP daemon: config, lifecycle, and its RIB read as the oracle."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from ipaddress import ip_network
from pathlib import Path

from tests.lab.bird_output import (
    BirdRoute,
    ChannelStatus,
    ImportCounters,
    ProtocolStatus,
    parse_protocol,
    parse_routes,
)
from tests.lab.description import Family
from tests.lab.netns import LabCommandError, Netns, run_command
from tests.lab.processes import signal_pid, terminate
from tests.lab.wait import assert_holds, wait_for

__all__ = [
    "Bird",
    "BirdConfig",
    "BirdRoute",
    "BirdSession",
    "ChannelStatus",
    "ImportCounters",
    "ProtocolStatus",
    "assert_holds",
    "render_bird_conf",
    "wait_for",
]

BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"


@dataclass(frozen=True)
class BirdSession:
    """One `protocol bgp` block; BGP forbids hold times between 0 and 3 s."""

    name: str
    local_address: str
    local_as: int
    neighbor_address: str
    peer_as: int
    families: tuple[Family, ...] = ("ipv4", "ipv6")
    hold_time_s: int = 3
    keepalive_s: int = 1
    passive: bool = False


@dataclass(frozen=True)
class BirdConfig:
    router_id: str
    sessions: tuple[BirdSession, ...]


def render_bird_conf(config: BirdConfig) -> str:
    """A BIRD 2 config that imports everything the PoP sends and exports nothing back."""
    out = [
        f"router id {config.router_id};",
        "log stderr all;",
        "timeformat protocol iso long ms;",
        "protocol device { }",
        "",
    ]
    for s in config.sessions:
        out += [
            f"protocol bgp {s.name} {{",
            f"  local {s.local_address} as {s.local_as};",
            f"  neighbor {s.neighbor_address} as {s.peer_as};",
            f"  hold time {s.hold_time_s};",
            f"  keepalive time {s.keepalive_s};",
            # Lab timers: retry fast, and come back fast after the PoP kills a session,
            # or every "ExaBGP restarted" test would wait out BIRD's default 60 s error wait.
            "  connect delay time 1;",
            "  connect retry time 1;",
            "  error wait time 1, 2;",
            "  error forget time 1;",
            *(["  passive on;"] if s.passive else []),
            *(f"  {fam} {{ import all; export none; }};" for fam in s.families),
            "}",
            "",
        ]
    return "\n".join(out)


class Bird:
    """A BIRD daemon in a namespace, queried over its control socket with birdc."""

    def __init__(self, netns: Netns, workdir: Path, config: BirdConfig, name: str = "bird") -> None:
        self.netns = netns
        self.config = config
        self.config_path = workdir / f"{name}.conf"
        self.socket_path = workdir / f"{name}.ctl"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._neighbors = {s.name: s.neighbor_address for s in config.sessions}

    def start(self, timeout_s: float = 5.0) -> float:
        """Start BIRD and return the seconds until its control socket answers."""
        self.config_path.write_text(render_bird_conf(self.config))
        run_command([BIRD, "-p", "-c", str(self.config_path)])
        self.proc = self.netns.popen(
            [BIRD, "-f", "-c", str(self.config_path), "-s", str(self.socket_path)],
            stdout_path=self.log_path,
            stderr_path=self.log_path,
        )
        return wait_for(
            lambda: self._alive_and(lambda: self.birdc("show", "status")),
            lambda out: "Daemon is up" in out,
            timeout_s=timeout_s,
            what=f"BIRD control socket {self.socket_path}",
        )

    def _alive_and(self, query: Callable[[], str]) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"BIRD exited {self.proc.returncode}: {self.log_tail()}")
        return query()

    def birdc(self, *command: str) -> str:
        # birdc runs in the root namespace: the control socket is a filesystem path.
        proc = run_command([BIRDC, "-s", str(self.socket_path), *command], check=False)
        if proc.returncode != 0:
            raise LabCommandError(["birdc", *command], proc.returncode, proc.stdout + proc.stderr)
        return proc.stdout

    def routes(self) -> dict[str, list[BirdRoute]]:
        routes = parse_routes(self.birdc("show", "route", "all"))
        return {p: [self._with_neighbor(r) for r in rs] for p, rs in routes.items()}

    def route(self, prefix: str) -> list[BirdRoute]:
        """The routes BIRD holds for `prefix` (empty when it has none)."""
        return self.routes().get(str(ip_network(prefix, strict=False)), [])

    def _with_neighbor(self, route: BirdRoute) -> BirdRoute:
        if route.neighbor is not None:
            return route
        return replace(route, neighbor=self._neighbors.get(route.protocol))

    def protocol(self, name: str) -> ProtocolStatus:
        return parse_protocol(self.birdc("show", "protocols", "all", name))

    def protocol_state(self, name: str) -> str:
        """The BGP state ("Established", "Active", "Connect", ...) or BIRD's protocol state."""
        status = self.protocol(name)
        return status.bgp_state or status.state

    def import_counters(self, name: str, channel: str | None = None) -> ImportCounters:
        """Import counters of one session, summed over its channels unless one is named.

        BIRD resets them when a channel goes down, so compare values within one session life.
        """
        return self.protocol(name).import_counters(channel)

    def session_names(self) -> list[str]:
        return [s.name for s in self.config.sessions]

    def wait_established(
        self, names: Sequence[str] | None = None, timeout_s: float = 10.0
    ) -> float:
        wanted = list(names) if names is not None else self.session_names()
        return wait_for(
            lambda: {n: self.protocol_state(n) for n in wanted},
            lambda states: all(v == "Established" for v in states.values()),
            timeout_s=timeout_s,
            what=f"BGP sessions {wanted} Established",
        )

    def wait_route(
        self, prefix: str, present: bool = True, timeout_s: float = 5.0, count: int = 1
    ) -> float:
        """Wait until `prefix` has at least `count` routes (or none, with present=False)."""
        if present:
            return wait_for(
                lambda: self.route(prefix),
                lambda rs: len(rs) >= count,
                timeout_s=timeout_s,
                what=f"{prefix} in BIRD",
            )
        return wait_for(
            lambda: self.route(prefix),
            lambda rs: not rs,
            timeout_s=timeout_s,
            what=f"{prefix} gone",
        )

    def configure(self) -> None:
        """Re-read the config after `self.config` was replaced (soft reconfiguration)."""
        self.config_path.write_text(render_bird_conf(self.config))
        self.birdc("configure")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 3.0) -> int | None:
        if self.proc is None:
            return None
        return terminate(self.proc, grace_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            signal_pid(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def bird_available() -> bool:
    return shutil.which(BIRD) is not None and shutil.which(BIRDC) is not None
