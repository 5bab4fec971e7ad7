"""ExaBGP's text API in one pure module: route commands out, acks and JSON events in (DESIGN §4)."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

from anycast_agent.core.commands import Announce, Command, Withdraw
from anycast_agent.errors import RenderError
from anycast_agent.model import MED_MISSING, NeighborState, RouteAttrs, RouteKey

_SAFE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no space, no control character
_COMMUNITY = re.compile(r"^\d{1,5}:\d{1,5}$")


def _token(value: str, what: str) -> str:
    if not _SAFE.match(value):
        raise RenderError(f"refusing to send {what} {value!r}: not a single printable ASCII token")
    return value


def _neighbor(text: str) -> str:
    try:
        return str(ip_address(_token(text, "neighbor")))
    except ValueError:
        raise RenderError(f"refusing to send neighbor {text!r}: not an IP address") from None


def _prefix(text: str) -> str:
    try:
        return str(ip_network(_token(text, "prefix"), strict=True))
    except ValueError:
        raise RenderError(f"refusing to send prefix {text!r}: not a CIDR prefix") from None


def _attrs(attrs: RouteAttrs) -> str:
    if not 0 <= attrs.med <= 0xFFFFFFFF:
        raise RenderError(f"refusing to send MED {attrs.med!r}: outside 0..4294967295")
    parts = [f"med {attrs.med}"]
    if attrs.as_path:
        for asn in attrs.as_path:
            if not (isinstance(asn, int) and 0 < asn < 0xFFFFFFFF):
                raise RenderError(f"refusing to send AS {asn!r} in an as-path")
        parts.append("as-path [" + " ".join(str(a) for a in attrs.as_path) + "]")
    if attrs.communities:
        for c in attrs.communities:
            if not _COMMUNITY.match(_token(c, "community")):
                raise RenderError(f"refusing to send community {c!r}")
        parts.append("community [" + " ".join(attrs.communities) + "]")
    return " ".join(parts)


def render(command: Command) -> str:
    """One command line for ExaBGP (without the newline). Raises RenderError on unsafe values."""
    match command:
        case Announce(key=key, attrs=attrs):
            return (
                f"neighbor {_neighbor(key.neighbor)} announce route {_prefix(key.prefix)} "
                f"next-hop self {_attrs(attrs)}"
            )
        case Withdraw(key=key):
            return f"neighbor {_neighbor(key.neighbor)} withdraw route {_prefix(key.prefix)}"
    raise RenderError(f"not a route command: {command!r}")  # pragma: no cover


SHOW_NEIGHBORS = "show neighbor summary"
SHOW_ADJ_RIB_OUT = "show adj-rib out extensive"


class Ack(enum.StrEnum):
    DONE = "done"
    ERROR = "error"
    SHUTDOWN = "shutdown"  # the answer ExaBGP gives while it is shutting down


# ExaBGP's `state` events say `connected`, `up` or `down`; the agent's vocabulary says
# `established` for `up`, as `show neighbor summary` does.
_EVENT_STATES = {
    "connected": NeighborState.CONNECTED,
    "up": NeighborState.ESTABLISHED,
    "down": NeighborState.DOWN,
}
# `show neighbor summary` prints the BGP FSM state.
_SUMMARY_STATES = {
    "established": NeighborState.ESTABLISHED,
    "opensent": NeighborState.CONNECTED,
    "openconfirm": NeighborState.CONNECTED,
}


@dataclass(frozen=True, slots=True)
class StateEvent:
    neighbor: str
    state: NeighborState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    neighbor: str
    text: str


@dataclass(frozen=True, slots=True)
class ShutdownEvent:
    pass


@dataclass(frozen=True, slots=True)
class OtherEvent:
    kind: str


@dataclass(frozen=True, slots=True)
class TextLine:
    """Output of a `show` command (anything that is neither an ack nor JSON)."""

    text: str


Inbound = Ack | StateEvent | NotificationEvent | ShutdownEvent | OtherEvent | TextLine


def parse_inbound(line: str) -> Inbound:
    """Classify one line ExaBGP wrote to the process's stdin."""
    text = line.strip()
    if text in ("done", "error", "shutdown"):
        return Ack(text)
    if text.startswith("{"):
        try:
            message = json.loads(text)
        except ValueError:
            return TextLine(text)
        if isinstance(message, dict):
            return _event(message)
    return TextLine(text)


def _peer(message: dict[str, object]) -> str:
    neighbor = message.get("neighbor")
    if isinstance(neighbor, dict):
        address = neighbor.get("address")
        if isinstance(address, dict) and isinstance(address.get("peer"), str):
            return str(address["peer"])
    return ""


def _event(message: dict[str, object]) -> Inbound:
    kind = str(message.get("type", ""))
    neighbor = message.get("neighbor")
    if kind == "state" and isinstance(neighbor, dict):
        state = _EVENT_STATES.get(str(neighbor.get("state", "")))
        if state is not None:
            return StateEvent(_peer(message), state, str(neighbor.get("reason", "")))
    if kind == "notification" and message.get("notification") == "shutdown":
        return ShutdownEvent()
    if kind == "notification" and isinstance(neighbor, dict):
        return NotificationEvent(_peer(message), json.dumps(neighbor.get("message", neighbor)))
    if kind == "shutdown":
        return ShutdownEvent()
    return OtherEvent(kind)


_ADJ_ROUTE = re.compile(
    r"^neighbor (?P<neighbor>\S+) .*?\b(?:ipv4|ipv6) unicast (?P<prefix>\S+)(?P<attrs>.*)$"
)
_MED = re.compile(r"\bmed (\d+)")
# 4.2 writes `as-path [ 65001 65001 ]`, 5.0 writes `as-path ( 65001 65001 )`.
_AS_PATH = re.compile(r"\bas-path (?:[\[(]\s*([\d\s]*?)\s*[\])]|(\d+))")
_COMMUNITIES = re.compile(r"\bcommunity (?:\[\s*([^\]]*?)\s*\]|(\S+))")


def parse_adj_rib_out(lines: list[str]) -> dict[RouteKey, RouteAttrs]:
    """`show adj-rib out extensive` output (4.2 and 5.0) → the routes ExaBGP holds."""
    held: dict[RouteKey, RouteAttrs] = {}
    for line in lines:
        m = _ADJ_ROUTE.match(line.strip())
        if not m:
            continue
        try:
            key = RouteKey(
                str(ip_address(m["neighbor"])), str(ip_network(m["prefix"], strict=False))
            )
        except ValueError:
            continue
        attrs = m["attrs"]
        med = _MED.search(attrs)
        path = _AS_PATH.search(attrs)
        comm = _COMMUNITIES.search(attrs)
        held[key] = RouteAttrs(
            med=int(med[1]) if med else MED_MISSING,
            as_path=tuple(int(a) for a in (path[1] or path[2]).split()) if path else (),
            communities=tuple((comm[1] or comm[2]).split()) if comm else (),
        )
    return held


def parse_neighbor_summary(lines: list[str]) -> dict[str, NeighborState]:
    """`show neighbor summary` → {peer address: state}.

    Lines are `peer AS up/down state #sent #recvd`; 4.2 lists established peers only, 5.0
    lists every peer (`down idle` when not up).
    """
    states: dict[str, NeighborState] = {}
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        try:
            peer = str(ip_address(fields[0]))
        except ValueError:
            continue
        states[peer] = _SUMMARY_STATES.get(fields[3].lower(), NeighborState.DOWN)
    return states
