"""Pure parsers for BIRD 2's `show route all` and `show protocols all` text."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

_ROUTE_HEAD = re.compile(
    r"^(?P<prefix>\S+)?\s+(?P<kind>unicast|blackhole|unreachable|prohibit)\s+"
    r"\[(?P<proto>\S+)\s+(?P<since>[^\]]*?)(?:\s+from\s+(?P<from>\S+))?\]\s*"
    r"(?P<primary>\*)?\s*\((?P<pref>\d+)(?:/[^)]*)?\)"
)
_VIA = re.compile(r"^\s+via\s+(?P<gw>\S+)")
_ATTR = re.compile(r"^\s+(?P<key>[A-Za-z][\w.]*):\s?(?P<value>.*)$")
_PAIR = re.compile(r"\((\d+),\s*(\d+)\)")
_TRIPLE = re.compile(r"\((\d+),\s*(\d+),\s*(\d+)\)")


@dataclass(frozen=True)
class BirdRoute:
    """One route of BIRD's RIB; `neighbor` is the session's peer address when known."""

    prefix: str
    protocol: str
    primary: bool
    preference: int
    gateway: str | None = None
    neighbor: str | None = None
    origin: str | None = None
    as_path: tuple[int, ...] = ()
    med: int | None = None
    local_pref: int | None = None
    next_hop: str | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def attribute(self, key: str) -> str | None:
        return dict(self.attributes).get(key)


def parse_routes(text: str) -> dict[str, list[BirdRoute]]:
    """Parse `show route all` into prefix → routes (BIRD's order: the primary route first)."""
    routes: dict[str, list[BirdRoute]] = {}
    current: dict[str, object] | None = None
    attrs: list[tuple[str, str]] = []
    prefix: str | None = None

    def flush() -> None:
        if current is not None:
            route = _build_route(current, attrs)
            routes.setdefault(route.prefix, []).append(route)

    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Table ")):
            continue
        head = _ROUTE_HEAD.match(line)
        if head:
            flush()
            if head["prefix"]:
                prefix = str(ipaddress.ip_network(head["prefix"], strict=False))
            if prefix is None:
                raise ValueError(f"route line without a prefix: {line!r}")
            current = {
                "prefix": prefix,
                "protocol": head["proto"],
                "primary": head["primary"] == "*",
                "preference": int(head["pref"]),
                "neighbor": head["from"],
            }
            attrs = []
            continue
        if current is None:
            continue
        via = _VIA.match(line)
        if via:
            current.setdefault("gateway", via["gw"])
            continue
        attr = _ATTR.match(line)
        if attr:
            attrs.append((attr["key"], attr["value"].strip()))
    flush()
    return routes


def _build_route(head: dict[str, object], attrs: list[tuple[str, str]]) -> BirdRoute:
    values = dict(attrs)
    route = BirdRoute(
        prefix=str(head["prefix"]),
        protocol=str(head["protocol"]),
        primary=bool(head["primary"]),
        preference=int(str(head["preference"])),
        gateway=_opt_str(head.get("gateway")),
        neighbor=_opt_str(head.get("neighbor")),
        attributes=tuple(attrs),
    )
    as_path = values.get("BGP.as_path", "")
    next_hop = values.get("BGP.next_hop", "").split()
    return replace(
        route,
        origin=values.get("BGP.origin"),
        # AS_SETs print as {a b}; the lab never sends them, so only sequence members are kept.
        as_path=tuple(int(tok) for tok in as_path.replace("{", " ").replace("}", " ").split()),
        med=_opt_int(values.get("BGP.med")),
        local_pref=_opt_int(values.get("BGP.local_pref")),
        next_hop=next_hop[0] if next_hop else None,
        communities=tuple(f"{a}:{b}" for a, b in _PAIR.findall(values.get("BGP.community", ""))),
        large_communities=tuple(
            f"{a}:{b}:{c}" for a, b, c in _TRIPLE.findall(values.get("BGP.large_community", ""))
        ),
    )


def _opt_int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class ImportCounters:
    """A channel's import rows of BIRD's "Route change stats" table."""

    updates_received: int = 0
    updates_rejected: int = 0
    updates_filtered: int = 0
    updates_ignored: int = 0
    updates_accepted: int = 0
    withdraws_received: int = 0
    withdraws_rejected: int = 0
    withdraws_ignored: int = 0
    withdraws_accepted: int = 0

    def __add__(self, other: ImportCounters) -> ImportCounters:
        return ImportCounters(*(a + b for a, b in zip(_values(self), _values(other), strict=True)))

    def __sub__(self, other: ImportCounters) -> ImportCounters:
        return ImportCounters(*(a - b for a, b in zip(_values(self), _values(other), strict=True)))

    @property
    def messages_received(self) -> int:
        """Every route update or withdraw BIRD saw, whether or not it changed the RIB."""
        return self.updates_received + self.withdraws_received


def _values(c: ImportCounters) -> tuple[int, ...]:
    return (
        c.updates_received,
        c.updates_rejected,
        c.updates_filtered,
        c.updates_ignored,
        c.updates_accepted,
        c.withdraws_received,
        c.withdraws_rejected,
        c.withdraws_ignored,
        c.withdraws_accepted,
    )


@dataclass(frozen=True)
class ChannelStatus:
    name: str
    state: str
    imported_routes: int
    imports: ImportCounters


@dataclass(frozen=True)
class ProtocolStatus:
    name: str
    state: str
    info: str
    bgp_state: str | None
    channels: dict[str, ChannelStatus]
    last_error: str | None = None

    def import_counters(self, channel: str | None = None) -> ImportCounters:
        chans = [self.channels[channel]] if channel else list(self.channels.values())
        total = ImportCounters()
        for chan in chans:
            total = total + chan.imports
        return total


_PROTO_HEAD = re.compile(
    r"^(?P<name>\S+)\s+(?P<proto>\S+)\s+(?P<table>\S+)\s+(?P<state>\S+)\s+(?P<since>\S+)\s*(?P<info>.*)$"
)
_STATS_ROW = re.compile(r"^\s+Import (?P<kind>updates|withdraws):\s+(?P<cols>.+)$")


def parse_protocol(text: str) -> ProtocolStatus:
    """Parse `show protocols all NAME` for a single protocol."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("BIRD ")]
    head: re.Match[str] | None = None
    for ln in lines:
        if ln.startswith("Name "):
            continue
        head = _PROTO_HEAD.match(ln)
        if head:
            break
    if head is None:
        raise ValueError(f"no protocol line in BIRD output: {text!r}")
    bgp_state: str | None = None
    last_error: str | None = None
    channels: dict[str, ChannelStatus] = {}
    chan: dict[str, object] | None = None

    def flush() -> None:
        if chan is not None:
            channels[str(chan["name"])] = ChannelStatus(
                name=str(chan["name"]),
                state=str(chan.get("state", "")),
                imported_routes=int(str(chan.get("imported", 0))),
                imports=ImportCounters(**chan.get("counters", {})),  # type: ignore[arg-type]
            )

    for ln in lines:
        stripped = ln.strip()
        if stripped.startswith("BGP state:"):
            bgp_state = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("Last error:"):
            last_error = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("Channel "):
            flush()
            chan = {"name": stripped.split()[1], "counters": {}}
        elif chan is not None and stripped.startswith("State:"):
            chan["state"] = stripped.split(":", 1)[1].strip()
        elif chan is not None and stripped.startswith("Routes:"):
            chan["imported"] = int(stripped.split()[1])
        elif chan is not None and (row := _STATS_ROW.match(ln)):
            cols = row["cols"].split()
            names = ("received", "rejected", "filtered", "ignored", "accepted")
            counters = chan["counters"]
            assert isinstance(counters, dict)
            for col, value in zip(names, cols, strict=True):
                if value != "---":
                    counters[f"{row['kind']}_{col}"] = int(value)
    flush()
    return ProtocolStatus(
        name=head["name"],
        state=head["state"],
        info=head["info"].strip(),
        bgp_state=bgp_state,
        channels=channels,
        last_error=last_error,
    )
