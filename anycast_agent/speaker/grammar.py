"""ExaBGP's text API in one pure module: route commands out, acks and JSON events in (DESIGN §4)."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Container
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

from anycast_agent.core.commands import Announce, Command, Withdraw
from anycast_agent.errors import RenderError
from anycast_agent.model import MED_MISSING, NeighborState, RouteAttrs, RouteKey

_SAFE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: fullmatch only, never `$`
_LINE = re.compile(r"[\x20-\x7e]+")  # the whole command: one printable ASCII line
_COMMUNITY = re.compile(r"(\d{1,5}):(\d{1,5})")
MED_MAX = 0xFFFFFFFF
ASN_MAX = 0xFFFFFFFF
U16_MAX = 0xFFFF


def _token(value: object, what: str) -> str:
    if type(value) is not str or not _SAFE.fullmatch(value):
        raise RenderError(f"refusing to send {what} {value!r}: not a single printable ASCII token")
    return value


def _integer(value: object, low: int, high: int, what: str) -> int:
    # Exactly an int: a bool is an int to Python and would render as "True".
    if type(value) is not int or not low <= value <= high:
        raise RenderError(f"refusing to send {what} {value!r}: not an integer in {low}..{high}")
    return value


def _neighbor(text: object) -> str:
    try:
        address = str(ip_address(_token(text, "neighbor")))
    except ValueError:
        address = ""
    if address != text:  # canonical text only: what the core makes
        raise RenderError(f"refusing to send neighbor {text!r}: not an IP address as written")
    return address


def _prefix(text: object, allowed: Container[str] | None) -> str:
    try:
        prefix = str(ip_network(_token(text, "prefix"), strict=True))
    except ValueError:
        prefix = ""
    if prefix != text or "/" not in prefix:  # canonical CIDR text only: what the core makes
        raise RenderError(f"refusing to send prefix {text!r}: not a CIDR prefix as written")
    if allowed is not None and prefix not in allowed:
        raise RenderError(
            f"refusing to send prefix {prefix}: neither configured nor held by ExaBGP (DESIGN §4)"
        )
    return prefix


def _community(value: object) -> str:
    match = _COMMUNITY.fullmatch(_token(value, "community"))
    halves = [int(half) for half in match.groups()] if match else []
    if not halves or max(halves) > U16_MAX or value != f"{halves[0]}:{halves[1]}":
        raise RenderError(f"refusing to send community {value!r}: not two 16-bit halves a:b")
    return value


def _attrs(attrs: RouteAttrs) -> str:
    parts = [f"med {_integer(attrs.med, 0, MED_MAX, 'MED')}"]
    if type(attrs.as_path) is not tuple or type(attrs.communities) is not tuple:
        raise RenderError(
            f"refusing to send attributes {attrs!r}: as-path and communities are tuples"
        )
    if attrs.as_path:
        path = [str(_integer(asn, 1, ASN_MAX, "AS number")) for asn in attrs.as_path]
        parts.append("as-path [" + " ".join(path) + "]")
    if attrs.communities:
        parts.append("community [" + " ".join(_community(c) for c in attrs.communities) + "]")
    return " ".join(parts)


def render(command: Command, allowed: Container[str] | None = None) -> str:
    """One command line for ExaBGP (without the newline). `allowed`: the prefixes that may be
    sent (configured, or held by ExaBGP and being drained out: DESIGN §4; None: not checked).
    Raises RenderError on anything else, before a byte is written."""
    match command:
        case Announce(key=key, attrs=RouteAttrs() as attrs):
            line = (
                f"neighbor {_neighbor(key.neighbor)} announce route "
                f"{_prefix(key.prefix, allowed)} next-hop self {_attrs(attrs)}"
            )
        case Withdraw(key=key):
            line = (
                f"neighbor {_neighbor(key.neighbor)} withdraw route {_prefix(key.prefix, allowed)}"
            )
        case _:
            raise RenderError(f"refusing to send {command!r}: not a route command")
    if not _LINE.fullmatch(line):  # pragma: no cover - every part is checked above
        raise RenderError(f"refusing to send {line!r}: not one printable ASCII line")
    return line


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
        except (ValueError, RecursionError):  # nested too deeply is no message of ExaBGP's
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
# Not inside `extended-community` or `large-community` (found by review: `target:...` crashed
# the start whenever ExaBGP held such a route).
_COMMUNITIES = re.compile(r"(?<![-\w])community (?:\[\s*([^\]]*?)\s*\]|(\S+))")


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
            communities=_standard((comm[1] or comm[2]).split()) if comm else (),
        )
    return held


def _standard(words: list[str]) -> tuple[str, ...]:
    """The a:b communities among what ExaBGP printed; names such as `no-export` are dropped
    (the agent never sends them, and they could not be sent back when draining a route out)."""
    out = []
    for word in words:
        match = _COMMUNITY.fullmatch(word)
        if match and max(int(half) for half in match.groups()) <= U16_MAX:
            out.append(f"{int(match[1])}:{int(match[2])}")
    return tuple(out)


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
