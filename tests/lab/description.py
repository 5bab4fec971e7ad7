"""The lab topology as plain data (links, addresses, BGP sessions, edges), built before any I/O."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

Family = Literal["ipv4", "ipv6"]

UPSTREAM_AS = 65000
POP_AS = 65001
MAX_LINKS = 63
EDGE_BASE = ipaddress.IPv4Address("203.0.113.11")


@dataclass(frozen=True)
class Link:
    """One veth between the upstream and the PoP, with an address per side and family."""

    index: int
    upstream_ifname: str
    pop_ifname: str
    upstream_v4: str
    pop_v4: str
    upstream_v6: str
    pop_v6: str


@dataclass(frozen=True)
class Session:
    """One eBGP session; `name` is the BIRD protocol name, addresses carry no prefix length."""

    name: str
    link: int
    upstream_address: str
    pop_address: str
    families: tuple[Family, ...]
    upstream_as: int = UPSTREAM_AS
    pop_as: int = POP_AS


@dataclass(frozen=True)
class LabDescription:
    links: tuple[Link, ...]
    sessions: tuple[Session, ...]
    edge_addresses: tuple[str, ...]
    upstream_as: int = UPSTREAM_AS
    pop_as: int = POP_AS
    upstream_router_id: str = field(default="")
    pop_router_id: str = field(default="")

    @classmethod
    def build(
        cls,
        *,
        links: int = 1,
        ipv6_sessions: bool = False,
        edges: int = 3,
        upstream_as: int = UPSTREAM_AS,
        pop_as: int = POP_AS,
    ) -> LabDescription:
        """One link keeps DESIGN §5's addresses (198.51.100.1/24 ↔ .2/24, 2001:db8:100::1/64 ↔ ::2);
        N links use /30s (.1/.2, .5/.6, .9/.10, ...) and 2001:db8:100:i::/64.

        Each link gets an IPv4 session carrying ipv4 unicast and, with `ipv6_sessions`, an IPv6
        session carrying ipv6 unicast: ExaBGP never delivers IPv6 routes over IPv4 sessions.
        """
        if not 1 <= links <= MAX_LINKS:
            raise ValueError(f"links must be 1..{MAX_LINKS}, got {links}")
        built_links = tuple(_link(i, single=links == 1) for i in range(links))
        sessions: list[Session] = []
        for link in built_links:
            sessions.append(
                Session(
                    name=f"pop{link.index}_v4",
                    link=link.index,
                    upstream_address=_addr(link.upstream_v4),
                    pop_address=_addr(link.pop_v4),
                    families=("ipv4",),
                    upstream_as=upstream_as,
                    pop_as=pop_as,
                )
            )
            if ipv6_sessions:
                sessions.append(
                    Session(
                        name=f"pop{link.index}_v6",
                        link=link.index,
                        upstream_address=_addr(link.upstream_v6),
                        pop_address=_addr(link.pop_v6),
                        families=("ipv6",),
                        upstream_as=upstream_as,
                        pop_as=pop_as,
                    )
                )
        return cls(
            links=built_links,
            sessions=tuple(sessions),
            edge_addresses=tuple(str(EDGE_BASE + i) for i in range(edges)),
            upstream_as=upstream_as,
            pop_as=pop_as,
            upstream_router_id=_addr(built_links[0].upstream_v4),
            pop_router_id=_addr(built_links[0].pop_v4),
        )

    def session(self, name: str) -> Session:
        for session in self.sessions:
            if session.name == name:
                return session
        raise KeyError(f"no session {name!r}; have {[s.name for s in self.sessions]}")


def _link(index: int, *, single: bool) -> Link:
    if single:
        v4_up, v4_pop = "198.51.100.1/24", "198.51.100.2/24"
    else:
        base = 4 * index
        v4_up, v4_pop = f"198.51.100.{base + 1}/30", f"198.51.100.{base + 2}/30"
    v6_net = "2001:db8:100::" if index == 0 else f"2001:db8:100:{index:x}::"
    return Link(
        index=index,
        upstream_ifname=f"up{index}",
        pop_ifname=f"pop{index}",
        upstream_v4=v4_up,
        pop_v4=v4_pop,
        upstream_v6=f"{v6_net}1/64",
        pop_v6=f"{v6_net}2/64",
    )


def _addr(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)
