"""The status document (`GET /v1/status`, `anycast-agent status --json`) from a snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

from anycast_agent.core.intents import POP, Drain, MedOverride
from anycast_agent.core.snapshot import RouteSnapshot, ServiceSnapshot, Snapshot, TargetSnapshot
from anycast_agent.model import NeighborState, RouteAttrs

JSON: TypeAlias = dict[str, Any]


def _attrs(a: RouteAttrs | None) -> JSON | None:
    if a is None:
        return None
    return {"med": a.med, "as_path": list(a.as_path), "communities": list(a.communities)}


def _expiry_json(expires: float | None, wall_now: float) -> JSON:
    return {
        "expires": expires,
        "expires_in_s": None if expires is None else round(max(0.0, expires - wall_now), 3),
    }


def _drain_json(d: Drain | None, wall_now: float) -> JSON | None:
    if d is None:
        return None
    return {
        "scope": "pop" if d.service == POP else "service",
        "reason": d.reason,
        "author": d.author,
        "since": d.since,
        "override_fleet": d.override_fleet,
        **_expiry_json(d.expires, wall_now),
    }


def _override_json(m: MedOverride | None, wall_now: float) -> JSON | None:
    if m is None:
        return None
    return {
        "med": m.med,
        "reason": m.reason,
        "author": m.author,
        "since": m.since,
        **_expiry_json(m.expires, wall_now),
    }


def _target_json(t: TargetSnapshot) -> JSON:
    return {
        "name": t.name,
        "kind": t.kind.value,
        "state": t.state.value,
        "last_ok": t.last_ok,
        "last_reason": t.last_reason,
        "last_latency_s": t.last_latency_s,
        "load": t.load,
        "probes_ok": t.probes_ok,
        "probes_failed": t.probes_failed,
        "skipped_slots": t.skipped_slots,
        "transitions": t.transitions,
        "checker_fault": None if t.checker_fault is None else t.checker_fault.value,
        "probe_bugs": t.probe_bugs,
    }


def _route_json(r: RouteSnapshot, neighbors: Mapping[str, NeighborState]) -> JSON:
    return {
        "prefix": r.prefix,
        "neighbor": r.neighbor,
        "neighbor_state": neighbors[r.neighbor].value if r.neighbor in neighbors else "unknown",
        "wanted": _attrs(r.wanted),
        "accepted": _attrs(r.accepted),
        "in_sync": r.wanted == r.accepted,
    }


def _service_json(s: ServiceSnapshot, snap: Snapshot, wall_now: float) -> JSON:
    return {
        "name": s.name,
        "state": s.phase.value,
        "reason": s.reason,
        "healthy": s.healthy,
        "total": s.total,
        "quorum": s.quorum,
        "med": s.med,
        "stage": s.stage,
        "ramp_mode": s.ramp_mode.value,
        "ramp_held": s.ramp_held,
        "suppressed": s.suppressed,
        "frozen": s.frozen,
        "damping_penalty": s.penalty,
        "transitions": s.transitions,
        "drain": _drain_json(s.drain, wall_now),
        "med_override": _override_json(s.med_override, wall_now),
        "session_drains": dict(s.session_drains),
        "fleet_state": None if s.published is None else s.published.value,
        "fleet_guard": s.guard,
        "fleet_drained_by": s.fleet_drained_by or None,
        "targets": [_target_json(t) for t in s.targets],
        "routes": [_route_json(r, snap.neighbors) for r in s.routes],
    }


def status_json(snap: Snapshot, wall_now: float) -> JSON:
    """The whole snapshot as JSON: what `anycast-agent status` shows."""
    return {
        "pop": snap.pop,
        "version": snap.version,
        "started_at": snap.started_at,
        "ready": snap.ready,
        "channel_up": snap.channel_up,
        "neighbors": [{"address": a, "state": s.value} for a, s in sorted(snap.neighbors.items())],
        "commands_sent": snap.commands_sent,
        "commands_acked": {k.value: n for k, n in sorted(snap.commands_acked.items())},
        "starts": snap.starts,
        "last_good_fallback": snap.last_good_fallback,
        "state_unreadable": snap.state_unreadable,
        "checker_faults": {k.value: n for k, n in snap.checker_faults.items() if n},
        "canary_up": snap.canary_up,
        "state_write_errors": snap.state_write_errors,
        "resync_corrections": snap.resync_corrections,
        "removal_held": snap.removal_held,
        "fd_limit": snap.fd_limit,
        "fd_needed": snap.fd_needed,
        "fleet": {
            "mode": snap.fleet_mode.value,
            "why": snap.fleet_why,
            "guard_refusals": {r.name.lower(): n for r, n in snap.guard_refusals.items()},
            "budget_slots_in_use": snap.fleet_slots_in_use,
            "budget_slots": snap.fleet_slots,
            "contact_age_s": snap.fleet_contact_age_s,
            "region": snap.fleet_region,
            "ctl_revision": snap.fleet_revision,
            "ctl_problems": list(snap.fleet_problems),
        },
        "services": [_service_json(s, snap, wall_now) for s in snap.services],
    }
