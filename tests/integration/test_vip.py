"""VIP management with real netlink, in a network namespace the test creates (DESIGN §3.3)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from anycast_agent.netlink.addresses import (
    Addresses,
    InterfaceNotFound,
    vip_of,
)

V4 = "192.0.2.10/32"
V6 = "2001:db8::10/128"


@dataclass(frozen=True)
class Ns:
    name: str
    interface: str

    def addr_show(self) -> str:
        return subprocess.run(
            ["ip", "-n", self.name, "address", "show", "dev", self.interface],
            capture_output=True,
            text=True,
            check=True,
        ).stdout


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def ns() -> Iterator[Ns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "VIP tests need root and iproute2 (network namespaces)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    name = "aav-" + secrets.token_hex(3)
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        # A dummy interface where the kernel has the module; this machine's kernel has none,
        # and lo is where VIPs live on many routers anyway.
        if ip("-n", name, "link", "add", "vip0", "type", "dummy", check=False).returncode == 0:
            ip("-n", name, "link", "set", "vip0", "up")
            interface = "vip0"
        else:
            interface = "lo"
        yield Ns(name, interface)
    finally:
        ip("netns", "delete", name)


def test_vip_of_prefix() -> None:
    assert vip_of("192.0.2.10/32") == ipaddress.ip_interface("192.0.2.10/32")
    assert vip_of(ipaddress.ip_network("2001:db8::10/128")) == ipaddress.ip_interface(V6)
    assert vip_of("198.51.100.0/24") == ipaddress.ip_interface("198.51.100.0/24")


async def test_add_remove_ipv4_idempotent(ns: Ns) -> None:
    vips = Addresses(ns.interface, netns=ns.name)
    assert not await vips.has(V4)
    assert await vips.add(V4) is True
    assert await vips.add(V4) is False  # EEXIST: already there
    assert "192.0.2.10/32" in ns.addr_show()
    assert await vips.has(V4)
    assert ipaddress.ip_interface(V4) in await vips.present()
    assert await vips.remove(V4) is True
    assert await vips.remove(V4) is False  # EADDRNOTAVAIL: already gone
    assert "192.0.2.10" not in ns.addr_show()
    assert not await vips.has(V4)


async def test_add_remove_ipv6_without_dad(ns: Ns) -> None:
    vips = Addresses(ns.interface, netns=ns.name)
    assert await vips.add(V6) is True
    assert await vips.add(ipaddress.ip_network(V6)) is False
    shown = ns.addr_show()
    line = next(ln for ln in shown.splitlines() if "2001:db8::10/128" in ln)
    assert "nodad" in line and "tentative" not in line, shown
    assert await vips.has(V6)
    assert await vips.remove(V6) is True
    assert await vips.remove(V6) is False
    assert "2001:db8::10" not in ns.addr_show()


async def test_check_mode_listing_sees_what_the_kernel_has(ns: Ns) -> None:
    # The listing the core's VIP gate decides from (VipsListed): addresses, whatever their
    # prefix length on the interface.
    ip("-n", ns.name, "address", "add", "192.0.2.10/24", "dev", ns.interface)
    vips = Addresses(ns.interface, netns=ns.name)
    present, problem = await vips.listing()
    assert problem == "" and present is not None
    assert "192.0.2.10" in present and "192.0.2.20" not in present and "2001:db8::10" not in present
    # An operator removing the address by hand is seen at the next look.
    ip("-n", ns.name, "address", "del", "192.0.2.10/24", "dev", ns.interface)
    present, _ = await vips.listing()
    assert present is not None and "192.0.2.10" not in present


async def test_missing_interface_is_named(ns: Ns) -> None:
    vips = Addresses("vip-nope", netns=ns.name)
    with pytest.raises(InterfaceNotFound, match="'vip-nope'"):
        await vips.add(V4)
    with pytest.raises(InterfaceNotFound, match="'vip-nope'"):
        await vips.present()
    with pytest.raises(InterfaceNotFound, match="'vip-nope'"):
        await vips.remove(V4)
    # What the agent lists instead: no addresses, and why (a checker fault, never a withdraw).
    present, problem = await vips.listing()
    assert present is None and "'vip-nope'" in problem


async def test_present_on_another_interface(ns: Ns) -> None:
    vips = Addresses("vip-nope", netns=ns.name)
    assert ipaddress.ip_interface("127.0.0.1/8") in await vips.present("lo")
