"""Defaults resolved: the validated config turned into the plain values the core decides with."""

from __future__ import annotations

from typing import TypeVar

from anycast_agent.config.checks import Target
from anycast_agent.config.schema import AgentConfig, Neighbor, Service
from anycast_agent.core.spec import (
    DampingPolicy,
    NeighborSpec,
    Policy,
    PopSpec,
    RampMode,
    ServiceSpec,
    TargetSpec,
)

T = TypeVar("T")


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


def policy(config: AgentConfig, s: Service) -> Policy:
    """The service's traffic-engineering settings with `defaults` filled in."""
    d = config.defaults
    ramp = s.ramp or d.ramp
    mode = ramp.mode
    if mode is RampMode.AUTO:
        if len(config.neighbors_of(s)) >= 2:
            mode = RampMode.NEIGHBORS
        elif len(s.prefixes) >= 2:
            mode = RampMode.PREFIXES
        else:
            mode = RampMode.PREPEND
    damping = s.damping or d.damping
    return Policy(
        local_as=config.bgp.local_as,
        med_hold_s=_pick(s.med_hold, d.med_hold),
        min_update_interval_s=_pick(s.min_update_interval, d.min_update_interval),
        capacity_penalty=_pick(s.capacity_penalty, d.capacity_penalty),
        load_tiers=tuple((t.load, t.med) for t in _pick(s.load_tiers, d.load_tiers)),
        drain_grace_s=_pick(s.drain_grace, d.drain_grace),
        damping=DampingPolicy(
            enabled=damping.enabled,
            penalty=damping.penalty,
            half_life=damping.half_life,
            suppress=damping.suppress,
            reuse=damping.reuse,
        ),
        stages=ramp.stages,
        stage_hold_s=ramp.stage_hold,
        ramp_mode=mode,
    )


def target_spec(config: AgentConfig, t: Target) -> TargetSpec:
    return TargetSpec(
        name=t.name,
        kind=t.kind,
        rise=config.rise(t),
        fall=config.fall(t),
        interval_s=config.interval_s(t),
        timeout_s=config.timeout_s(t),
        check=t.check,
    )


def service_spec(config: AgentConfig, s: Service) -> ServiceSpec:
    return ServiceSpec(
        name=s.name,
        prefixes=s.prefixes,
        med=s.med,
        med_down=s.med_down,
        communities=s.communities,
        on_down=s.on_down,
        quorum=s.quorum(),
        neighbors=tuple(_neighbor(n) for n in config.neighbors_of(s)),
        targets=tuple(target_spec(config, t) for t in s.targets),
        policy=policy(config, s),
    )


def _neighbor(n: Neighbor) -> NeighborSpec:
    return NeighborSpec(str(n.address), n.families)


def pop_spec(config: AgentConfig) -> PopSpec:
    """Everything the core needs from the config, as frozen plain values."""
    return PopSpec(
        pop=config.pop,
        services=tuple(service_spec(config, s) for s in config.services),
        neighbors=tuple(_neighbor(n) for n in config.bgp.neighbors),
        addresses=config.addresses.mode,
        vip_interface=config.addresses.interface,
        remove_vip_on_withdraw=config.addresses.remove_on_withdraw,
        checker_fault_max_s=config.checker_fault_max,
        local_as=config.bgp.local_as,
        drain_grace_s=config.defaults.drain_grace,
        fleet=config.fleet is not None,
        region=config.fleet.region if config.fleet is not None else "",
    )
