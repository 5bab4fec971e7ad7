"""VIP addresses on the PoP's interface (DESIGN §3.3 `addresses.mode`); the only pyroute2 importer.

`check` asks `present()` before announcing; `manage` calls `add()` before an announce and
`remove()` after a withdraw. Every call opens its own netlink socket (~2 ms) in a worker
thread: calls are rare (service transitions, one listing per decision step) and a socket per
call never shares pyroute2 state between threads. pyroute2 is imported on first use (~9 MB of
memory an agent without `addresses.mode` never pays).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from anycast_agent.errors import AgentError

log = logging.getLogger("anycast_agent")

if TYPE_CHECKING:
    from pyroute2 import NetlinkError

Vip = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network

# IFA_F_NODAD: an anycast address is the same on every PoP by design; duplicate address
# detection would hold it tentative (unusable) for ~1-2 s, or forever on a DAD "conflict".
IFA_F_NODAD = 0x02


class InterfaceNotFound(AgentError):
    """`addresses.interface` names no interface (in this network namespace)."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        super().__init__(f"addresses.interface {interface!r}: no such interface")


class AddressError(AgentError):
    """The kernel refused an address change; carries the operation, address and interface."""

    def __init__(self, action: str, vip: Vip, interface: str, reason: str) -> None:
        self.action = action
        self.vip = vip
        self.interface = interface
        super().__init__(f"cannot {action} {vip} on {interface}: {reason}")


def vip_of(prefix: Prefix | str) -> Vip:
    """The address a prefix stands for: its network address with its prefix length
    (192.0.2.10/32 → 192.0.2.10/32, 2001:db8::10/128 → 2001:db8::10/128)."""
    net = ipaddress.ip_network(prefix, strict=False)
    return ipaddress.ip_interface(f"{net.network_address}/{net.prefixlen}")


# What a netlink call may raise: the interface is gone, the kernel refused, or the socket failed.
NETLINK_ERRORS = (InterfaceNotFound, AddressError, OSError)

A = TypeVar("A")
R = TypeVar("R")

# Netlink calls get their own thread: the default executor also resolves host names for the
# probes, and a resolver outage must not stall the VIP check (and with it every decision).
_NETLINK = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")


async def _run(fn: Callable[[A], R], arg: A) -> R:
    return await asyncio.get_running_loop().run_in_executor(_NETLINK, fn, arg)


class Addresses:
    """Addresses on one interface, optionally inside a named network namespace (tests)."""

    def __init__(self, interface: str, *, netns: str | None = None) -> None:
        self.interface = interface
        self.netns = netns

    # -- asyncio API (what the agent awaits) -----------------------------------------------------

    async def present(self, interface: str | None = None) -> set[Vip]:
        return await _run(self.present_sync, interface)

    async def has(self, address: Vip | Prefix | str) -> bool:
        return await _run(self.has_sync, address)

    async def add(self, address: Vip | Prefix | str) -> bool:
        """Add the VIP; returns False if it was already there."""
        return await _run(self.add_sync, address)

    async def remove(self, address: Vip | Prefix | str) -> bool:
        """Remove the VIP; returns False if it was not there."""
        return await _run(self.remove_sync, address)

    # -- the blocking calls ----------------------------------------------------------------------

    async def listing(self) -> tuple[frozenset[str] | None, str]:
        """The addresses on the interface, as text; (None, why) when they cannot be listed."""
        try:
            return frozenset(str(v.ip) for v in await self.present()), ""
        except NETLINK_ERRORS as exc:
            return None, str(exc)

    async def add_vip(self, prefix: str) -> str:
        """Put the prefix's address up before its route is announced: "" once it is there,
        else why not (the announce waits)."""
        try:
            if await self.add(vip_of(prefix)):
                log.info("VIP %s added on %s", prefix, self.interface)
        except NETLINK_ERRORS as exc:
            return str(exc)
        return ""

    async def remove_vip(self, prefix: str) -> None:
        """Take the prefix's address down after its last withdraw; a failure is only logged."""
        try:
            if await self.remove(vip_of(prefix)):
                log.info("VIP %s removed from %s", prefix, self.interface)
        except NETLINK_ERRORS as exc:
            log.error("%s", exc)

    def present_sync(self, interface: str | None = None) -> set[Vip]:
        from pyroute2 import NetlinkError  # noqa: PLC0415 - on first use, see the docstring

        name = interface or self.interface
        try:
            with self._ipr() as ipr:
                index = _index(ipr, name)
                found: set[Vip] = set()
                for msg in ipr.get_addr(index=index):
                    address = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
                    if address:
                        found.add(ipaddress.ip_interface(f"{address}/{msg['prefixlen']}"))
                return found
        except NetlinkError as exc:  # e.g. ENOBUFS: the caller withholds, it never crashes
            raise OSError(exc.code, f"listing addresses on {name}: {_reason(exc)}") from exc

    def has_sync(self, address: Vip | Prefix | str) -> bool:
        vip = _vip(address)
        return any(v.ip == vip.ip for v in self.present_sync())

    def add_sync(self, address: Vip | Prefix | str) -> bool:
        from pyroute2 import NetlinkError  # noqa: PLC0415 - on first use, see the docstring

        vip = _vip(address)
        extra: dict[str, Any] = {"flags": IFA_F_NODAD} if vip.version == 6 else {}
        with self._ipr() as ipr:
            index = _index(ipr, self.interface)
            try:
                ipr.addr(
                    "add",
                    index=index,
                    address=str(vip.ip),
                    prefixlen=vip.network.prefixlen,
                    **extra,
                )
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    return False
                raise AddressError("add", vip, self.interface, _reason(exc)) from exc
        return True

    def remove_sync(self, address: Vip | Prefix | str) -> bool:
        from pyroute2 import NetlinkError  # noqa: PLC0415 - on first use, see the docstring

        vip = _vip(address)
        with self._ipr() as ipr:
            index = _index(ipr, self.interface)
            try:
                ipr.addr("del", index=index, address=str(vip.ip), prefixlen=vip.network.prefixlen)
            except NetlinkError as exc:
                if exc.code == errno.EADDRNOTAVAIL:
                    return False
                raise AddressError("remove", vip, self.interface, _reason(exc)) from exc
        return True

    def _ipr(self) -> Any:
        from pyroute2 import IPRoute  # noqa: PLC0415 - on first use, see the docstring

        return IPRoute(netns=self.netns) if self.netns else IPRoute()


def _vip(address: Vip | Prefix | str) -> Vip:
    if isinstance(address, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return address
    return vip_of(address)


def _index(ipr: Any, interface: str) -> int:
    found = ipr.link_lookup(ifname=interface)
    if not found:
        raise InterfaceNotFound(interface)
    index: int = found[0]
    return index


def _reason(exc: NetlinkError) -> str:
    return f"{errno.errorcode.get(exc.code, exc.code)} ({exc.code}): {exc}"
