"""Agent.snapshot(): the same object until the core or the coordinator's figures change, so the
control endpoint renders each once (it keeps renderings per snapshot object)."""

from __future__ import annotations

from dataclasses import dataclass

from anycast_agent.agent import Agent
from anycast_agent.core import events as e
from anycast_agent.fleet.coordinator import FleetStats
from anycast_agent.model import NeighborState
from anycast_agent.speaker.dry_run import DryRunSpeaker
from tests.unit.builders import make_config


@dataclass
class FakeCoordinator:
    figures: FleetStats

    def stats(self) -> FleetStats:
        return self.figures


def make_agent() -> Agent:
    return Agent(make_config(), DryRunSpeaker(lambda line: None), dry_run=True)


def test_standalone_the_cores_own_snapshot() -> None:
    agent = make_agent()
    assert agent.snapshot() is agent.snapshot() is agent.pop.snapshot()


def test_with_a_coordinator_the_same_object_until_something_changes() -> None:
    agent = make_agent()
    fleet = FakeCoordinator(FleetStats(1, 3, 50.0, True))
    agent.fleet = fleet  # type: ignore[assignment]
    first = agent.snapshot()
    assert agent.snapshot() is first
    assert (first.fleet_slots_in_use, first.fleet_slots, first.fleet_last_contact) == (1, 3, 50.0)
    fleet.figures = FleetStats(2, 3, 50.0, True)  # a budget slot taken
    second = agent.snapshot()
    assert second is not first and second.fleet_slots_in_use == 2
    assert agent.snapshot() is second
    fleet.figures = FleetStats(2, 3, 51.0, True)  # etcd answered again
    third = agent.snapshot()
    assert third is not second and third.fleet_last_contact == 51.0
    agent.pop.handle(e.NeighborChanged(agent.now(), "198.51.100.1", NeighborState.DOWN, ""))
    fourth = agent.snapshot()  # the core changed
    assert fourth is not third and fourth.neighbors["198.51.100.1"] is NeighborState.DOWN
    assert agent.snapshot() is fourth
