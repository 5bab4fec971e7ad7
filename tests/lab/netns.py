"""Network namespaces and veth links for the lab, driven through iproute2."""

from __future__ import annotations

import ipaddress
import secrets
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from tests.lab.processes import ProcessRegistry, signal_pid
from tests.lab.wait import wait_for

NAME_PREFIX = "aa-"
MAX_IFNAME = 15
COMMAND_TIMEOUT_S = 10.0


class LabCommandError(RuntimeError):
    """A lab setup command failed; carries the argv and what the command said."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"{' '.join(argv)!r} exited {returncode}: {output.strip()}")
        self.argv = tuple(argv)
        self.returncode = returncode
        self.output = output


def run_command(
    argv: Sequence[str], *, check: bool = True, timeout_s: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise LabCommandError(argv, proc.returncode, proc.stderr + proc.stdout)
    return proc


def unique_lab_id() -> str:
    """`aa-` and 6 random hex digits: room for a role suffix within the 15-char ifname limit."""
    return NAME_PREFIX + secrets.token_hex(3)


def list_namespaces() -> set[str]:
    out = run_command(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


class Netns:
    """One network namespace; processes started in it are recorded in the lab's registry."""

    def __init__(self, name: str, registry: ProcessRegistry) -> None:
        if not name.startswith(NAME_PREFIX) or len(name) > MAX_IFNAME:
            raise ValueError(
                f"namespace name {name!r} must start with {NAME_PREFIX!r}, <= 15 chars"
            )
        self.name = name
        self.registry = registry
        self.deleted = False

    @classmethod
    def create(cls, name: str, registry: ProcessRegistry) -> Netns:
        run_command(["ip", "netns", "add", name])
        ns = cls(name, registry)
        try:
            ns.ip("link", "set", "lo", "up")
            # Without DAD, addresses (link-local ones too: BIRD wants them for IPv6 eBGP
            # next hops) are usable at once instead of after ~1-2 s of tentative state.
            ns.run(
                [
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ]
            )
        except BaseException:
            ns.delete()
            raise
        return ns

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        # `ip netns exec` execs the command, so the Popen PID is the daemon's own PID.
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], check: bool = True, timeout_s: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return run_command(self.exec_argv(argv), check=check, timeout_s=timeout_s)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start a tracked process in the namespace (see `ProcessRegistry.spawn` for kw)."""
        return self.registry.spawn(self.exec_argv(argv), **kw)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_command(["ip", "-n", self.name, *args], check=check)

    def add_address(self, ifname: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        extra = ["nodad"] if iface.version == 6 else []
        self.ip("address", "add", cidr, "dev", ifname, *extra)

    def add_dummy(self, ifname: str) -> None:
        self.ip("link", "add", ifname, "type", "dummy")
        self.link_up(ifname)

    def link_up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def link_down(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "down")

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def enable_forwarding(self) -> None:
        self.sysctl("net.ipv4.ip_forward", "1")
        self.sysctl("net.ipv6.conf.all.forwarding", "1")

    def pids(self) -> list[int]:
        out = run_command(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(tok) for tok in out.split()]

    def delete(self, grace_s: float = 1.0) -> None:
        """Kill whatever still runs inside (e.g. API processes ExaBGP forked), then delete.

        The name is unique to this lab, so everything in it was started by the lab.
        """
        if self.deleted:
            return
        leftovers = self.pids()
        for pid in leftovers:
            signal_pid(pid, signal.SIGTERM)
        if leftovers:
            try:
                wait_for(self.pids, lambda p: not p, timeout_s=grace_s, what=f"{self.name} empty")
            except AssertionError:
                for pid in self.pids():
                    signal_pid(pid, signal.SIGKILL)
                wait_for(self.pids, lambda p: not p, timeout_s=5.0, what=f"{self.name} empty")
        run_command(["ip", "netns", "delete", self.name])
        self.deleted = True


def veth_pair(a: Netns, a_ifname: str, b: Netns, b_ifname: str) -> None:
    """Create a veth pair directly inside both namespaces, so short fixed names never collide
    with another lab's links in the root namespace."""
    for name in (a_ifname, b_ifname):
        if len(name) > MAX_IFNAME:
            raise ValueError(f"interface name {name!r} longer than {MAX_IFNAME} chars")
    run_command(
        [
            "ip",
            "link",
            "add",
            a_ifname,
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            "name",
            b_ifname,
            "netns",
            b.name,
        ]
    )
    a.link_up(a_ifname)
    b.link_up(b_ifname)
