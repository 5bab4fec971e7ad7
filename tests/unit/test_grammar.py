"""Golden tests for the ExaBGP text API renderer and parsers, on real 4.2 and 5.0 captures."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anycast_agent.core.commands import Announce, Withdraw
from anycast_agent.errors import RenderError
from anycast_agent.model import MED_MISSING, NeighborState, RouteAttrs, RouteKey
from anycast_agent.speaker.grammar import (
    Ack,
    ShutdownEvent,
    StateEvent,
    TextLine,
    parse_adj_rib_out,
    parse_inbound,
    parse_neighbor_summary,
    render,
)

SAMPLES = Path(__file__).parent.parent / "samples"
VERSIONS = ["exabgp-4.2", "exabgp-5.0"]


def sample(version: str, name: str) -> list[str]:
    path = SAMPLES / version / name
    if not path.exists():
        pytest.fail(f"missing capture {path}")
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


KEY = RouteKey("198.51.100.1", "192.0.2.10/32")


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (
            Announce(KEY, RouteAttrs(med=100), "test"),
            "neighbor 198.51.100.1 announce route 192.0.2.10/32 next-hop self med 100",
        ),
        (
            Announce(
                KEY,
                RouteAttrs(
                    med=4294967294, as_path=(65001, 65001), communities=("65001:100", "65535:0")
                ),
                "t",
            ),
            "neighbor 198.51.100.1 announce route 192.0.2.10/32 next-hop self med 4294967294 "
            "as-path [65001 65001] community [65001:100 65535:0]",
        ),
        (
            Announce(RouteKey("2001:db8:100::1", "2001:db8::10/128"), RouteAttrs(med=0), "t"),
            "neighbor 2001:db8:100::1 announce route 2001:db8::10/128 next-hop self med 0",
        ),
        (Withdraw(KEY, "t"), "neighbor 198.51.100.1 withdraw route 192.0.2.10/32"),
    ],
)
def test_render_golden(command: Announce | Withdraw, line: str) -> None:
    # Both supported versions accept the same command text (captured in tests/samples/*/ack-*).
    assert render(command) == line


@pytest.mark.parametrize(
    "bad",
    [
        Announce(
            RouteKey("198.51.100.1\nannounce route 0.0.0.0/0", "192.0.2.10/32"),
            RouteAttrs(med=1),
            "t",
        ),
        Announce(
            RouteKey("198.51.100.1", "192.0.2.10/32 next-hop 1.2.3.4"), RouteAttrs(med=1), "t"
        ),
        Announce(KEY, RouteAttrs(med=-1), "t"),
        Announce(KEY, RouteAttrs(med=2**32), "t"),
        Announce(KEY, RouteAttrs(med=1, communities=("65001:1]\nwithdraw",)), "t"),
        Announce(KEY, RouteAttrs(med=1, communities=("65001:1é",)), "t"),
        Announce(KEY, RouteAttrs(med=1, as_path=(0,)), "t"),
        Withdraw(RouteKey("198.51.100.1", "192.0.2.11/24"), "t"),
    ],
)
def test_render_refuses_unsafe_values(bad: Announce | Withdraw) -> None:
    with pytest.raises(RenderError, match="refusing to send"):
        render(bad)


@given(
    neighbor=st.text(max_size=40),
    prefix=st.text(max_size=40),
    med=st.integers(min_value=-(2**40), max_value=2**40),
    communities=st.lists(st.text(max_size=15), max_size=3),
    as_path=st.lists(st.integers(min_value=-5, max_value=2**33), max_size=4),
)
def test_no_input_renders_a_second_command_or_an_unlisted_prefix(
    neighbor: str, prefix: str, med: int, communities: list[str], as_path: list[int]
) -> None:
    command = Announce(
        RouteKey(neighbor, prefix), RouteAttrs(med, tuple(as_path), tuple(communities)), "p"
    )
    try:
        line = render(command)
    except RenderError:
        return
    assert "\n" not in line and "\r" not in line
    assert line.isascii() and line.isprintable()
    words = line.split()
    assert words[1] == neighbor and words[4] == str(ip_network(prefix))
    assert line.count("announce") == 1 and "withdraw" not in line


@given(st.sampled_from(["198.51.100.1", "2001:db8:100::1"]), st.text(max_size=30))
def test_withdraw_is_one_line(neighbor: str, prefix: str) -> None:
    try:
        line = render(Withdraw(RouteKey(neighbor, prefix), "p"))
    except RenderError:
        return
    assert line == f"neighbor {neighbor} withdraw route {ip_network(prefix)}"


@pytest.mark.parametrize("version", VERSIONS)
def test_acks(version: str) -> None:
    assert [parse_inbound(line) for line in sample(version, "ack-announce.txt")] == [Ack.DONE]
    errors = [parse_inbound(line) for line in sample(version, "ack-error-unknown-command.txt")]
    assert Ack.ERROR in errors


@pytest.mark.parametrize("version", VERSIONS)
def test_state_events(version: str) -> None:
    events = [parse_inbound(line) for line in sample(version, "state-connected-up.txt")]
    ups = [e for e in events if isinstance(e, StateEvent) and e.state is NeighborState.ESTABLISHED]
    assert {e.neighbor for e in ups} >= {"198.51.100.1"}
    downs = [parse_inbound(line) for line in sample(version, "state-down-bird-killed.txt")]
    down = next(e for e in downs if isinstance(e, StateEvent))
    assert down.state is NeighborState.DOWN and down.reason


@pytest.mark.parametrize("version", VERSIONS)
def test_shutdown(version: str) -> None:
    items = [parse_inbound(line) for line in sample(version, "shutdown.txt")]
    assert any(isinstance(i, ShutdownEvent) for i in items) or any(
        isinstance(i, StateEvent) and i.state is NeighborState.DOWN for i in items
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_adj_rib_out(version: str) -> None:
    lines = sample(version, "show-adj-rib-out-extensive.txt")
    assert all(not isinstance(parse_inbound(line), TextLine) or line for line in lines)
    held = parse_adj_rib_out(lines)
    assert held[RouteKey("198.51.100.1", "192.0.2.10/32")] == RouteAttrs(med=100)
    assert held[RouteKey("198.51.100.1", "192.0.2.11/32")] == RouteAttrs(
        med=100, as_path=(65001, 65001), communities=("65001:100", "65535:0")
    )
    assert held[RouteKey("198.51.100.5", "192.0.2.12/32")] == RouteAttrs(
        med=200, communities=("65001:200",)
    )
    assert RouteKey("198.51.100.5", "192.0.2.11/32") not in held


@pytest.mark.parametrize("version", VERSIONS)
def test_neighbor_summary(version: str) -> None:
    states = parse_neighbor_summary(sample(version, "show-neighbor-summary.txt"))
    assert states["198.51.100.1"] == "established"


def test_neighbor_summary_down() -> None:
    # 4.2 leaves a peer out while it is down; 5.0 lists it as `down idle`.
    assert parse_neighbor_summary(sample("exabgp-4.2", "show-neighbor-summary-down.txt")) == {}
    down = parse_neighbor_summary(sample("exabgp-5.0", "show-neighbor-summary-both-down.txt"))
    assert down == {"198.51.100.1": NeighborState.DOWN, "198.51.100.5": NeighborState.DOWN}


def test_a_held_route_without_a_med_is_marked_as_not_the_agents() -> None:
    # R27: a static route of ExaBGP's own config, after its reload, carries no MED.
    line = (
        "neighbor 198.51.100.1 local-ip 198.51.100.2 local-as 65001 peer-as 65000 router-id "
        "198.51.100.2 family-allowed in-open ipv4 unicast 192.0.2.10/32 next-hop 198.51.100.2"
    )
    held = parse_adj_rib_out([line])
    assert held == {RouteKey("198.51.100.1", "192.0.2.10/32"): RouteAttrs(med=MED_MISSING)}
