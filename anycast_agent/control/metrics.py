"""Prometheus metrics computed at scrape time from the agent's snapshot, in a private registry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from anycast_agent.core.snapshot import Snapshot
from anycast_agent.model import FleetMode, NeighborState, RefusalReason, TargetState

PREFIX = "anycast_agent_"


def _g(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def _c(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=list(labels))


class SnapshotCollector(Collector):
    """Every metric of the agent, read from one snapshot per scrape (so a scrape is consistent).

    Labels are bounded by the config (service, target, prefix, neighbor) and closed enums
    (state, result); free text such as failure or drain reasons is never a label.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshot = snapshot
        self._monotonic = monotonic

    def describe(self) -> Iterator[Metric]:
        # No description at registration: describe() would otherwise call collect() and read a
        # snapshot before the agent has one.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield from self._agent(snap)
        yield from self._targets(snap)
        yield from self._services(snap)
        yield from self._routes(snap)
        yield from self._fleet(snap)

    def _agent(self, snap: Snapshot) -> Iterator[Metric]:
        info = InfoMetricFamily(PREFIX + "build", "The agent's version.", labels=["version"])
        info.add_metric([snap.version], {})
        yield info
        starts = _c("starts", "Agent starts counted in state_dir, respawns by ExaBGP included.")
        starts.add_metric([], snap.starts)
        yield starts
        for name, doc, value in (
            (
                "last_good_config_in_use",
                "1 while the agent runs its last-good config because the given one is invalid.",
                snap.last_good_fallback,
            ),
            (
                "state_unreadable",
                "1 when the state file and its last-good copy could not be read.",
                snap.state_unreadable,
            ),
            ("exabgp_channel_up", "1 while the ExaBGP API channel answers.", snap.channel_up),
            ("ready", "1 once every service has been decided since the start.", snap.ready),
        ):
            g = _g(name, doc)
            g.add_metric([], 1.0 if value else 0.0)
            yield g
        age = _g(
            "last_progress_age_seconds",
            "Seconds since the probe loop or the decision step last made progress.",
        )
        age.add_metric([], max(0.0, self._monotonic() - snap.last_progress))
        yield age
        fault = _g(
            "checker_fault",
            "Targets whose last check failed in the agent itself, by reason (errno, resolver); "
            "netlink and canary are 1 while failing. Their health is frozen, not failed.",
            ("reason",),
        )
        for reason, count in snap.checker_faults.items():
            fault.add_metric([reason.value], count)
        yield fault
        if snap.canary_up is not None:
            canary = _g("canary_up", "1 while the agent can probe its own loopback canary.")
            canary.add_metric([], 1.0 if snap.canary_up else 0.0)
            yield canary
        for name, doc, count in (
            ("fd_limit", "The agent's open-file limit (RLIMIT_NOFILE) at start.", snap.fd_limit),
            ("fd_needed", "Open files the config needs at most (targets, margin).", snap.fd_needed),
        ):
            g = _g(name, doc)
            g.add_metric([], count)
            yield g
        neighbor_up = _g("neighbor_up", "1 while the BGP session is established.", ("neighbor",))
        for address, state in sorted(snap.neighbors.items()):
            neighbor_up.add_metric([address], 1.0 if state is NeighborState.ESTABLISHED else 0.0)
        yield neighbor_up
        writes = _c(
            "state_write_errors",
            "State file writes that failed (the operator change they carried was refused).",
        )
        writes.add_metric([], snap.state_write_errors)
        yield writes
        corrections = _c(
            "resync_corrections",
            "Routes a re-read of ExaBGP's adj-rib-out found otherwise than acknowledged, and "
            "corrected (ExaBGP reloaded its own config: R27).",
        )
        corrections.add_metric([], snap.resync_corrections)
        yield corrections
        held = _g(
            "removal_held_routes",
            "Routes the config no longer lists, all held back: more than half of what ExaBGP "
            "holds would go (`anycast-agent reload --allow-withdraw` confirms).",
        )
        held.add_metric([], snap.removal_held)
        yield held
        sent = _c("commands_sent", "Route commands written to ExaBGP.")
        sent.add_metric([], snap.commands_sent)
        yield sent
        acked = _c(
            "commands_acked",
            "Route commands answered by ExaBGP, by result (done, error, timeout).",
            ("result",),
        )
        for result, count in sorted(snap.commands_acked.items()):
            acked.add_metric([result.value], count)
        yield acked

    def _targets(self, snap: Snapshot) -> Iterator[Metric]:
        labels = ("service", "target")
        state = _g(
            "target_state",
            "1 for the target's current state, 0 for the others.",
            (*labels, "state"),
        )
        duration = _g(
            "target_probe_duration_seconds", "Latency of the target's last probe.", labels
        )
        probes = _c(
            "target_probes", "Probes finished, by result (ok, failed).", (*labels, "result")
        )
        skipped = _c(
            "target_skipped_slots",
            "Probe slots skipped because the previous probe was still running.",
            labels,
        )
        transitions = _c("target_transitions", "Target state changes.", labels)
        bugs = _c(
            "probe_bugs",
            "Checks whose probe code raised (counted as target failures; a bug to report).",
            labels,
        )
        for svc in snap.services:
            for t in svc.targets:
                key = [svc.name, t.name]
                for s in TargetState:
                    state.add_metric([*key, s.value], 1.0 if t.state is s else 0.0)
                if t.last_latency_s is not None:
                    duration.add_metric(key, t.last_latency_s)
                probes.add_metric([*key, "ok"], t.probes_ok)
                probes.add_metric([*key, "failed"], t.probes_failed)
                skipped.add_metric(key, t.skipped_slots)
                transitions.add_metric(key, t.transitions)
                bugs.add_metric(key, t.probe_bugs)
        yield from (state, duration, probes, skipped, transitions, bugs)

    def _services(self, snap: Snapshot) -> Iterator[Metric]:
        lab = ("service",)
        families = {
            "healthy": _g("service_healthy_targets", "Targets counted healthy.", lab),
            "total": _g("service_targets", "Targets configured.", lab),
            "quorum": _g("service_quorum_targets", "Healthy targets needed to be up.", lab),
            "up": _g(
                "service_up",
                "1 while the service is healthy and announced, fully or at a ramp stage.",
                lab,
            ),
            "stage": _g(
                "ramp_stage_percent",
                "Ramp stage: 100 when fully announced, 0 when withdrawn.",
                lab,
            ),
            "held": _g("ramp_held", "1 while an operator holds the service's ramp.", lab),
            "med": _g("service_med", "The MED announced (absent while withdrawn).", lab),
            "drained": _g(
                "service_drained", "1 while an operator drain (own or PoP-wide) applies.", lab
            ),
            "override": _g(
                "service_med_override", "1 while an operator MED override applies.", lab
            ),
            "suppressed": _g(
                "service_suppressed", "1 while flap damping keeps the service withdrawn.", lab
            ),
            "penalty": _g("service_damping_penalty", "Flap-damping penalty (decays).", lab),
            "frozen": _g(
                "service_frozen", "1 while a checker fault freezes the service's health.", lab
            ),
        }
        transitions = _c("service_transitions", "Service UP/DOWN changes.", lab)
        for svc in snap.services:
            key = [svc.name]
            families["healthy"].add_metric(key, svc.healthy)
            families["total"].add_metric(key, svc.total)
            families["quorum"].add_metric(key, svc.quorum)
            families["up"].add_metric(key, 1.0 if svc.announcing else 0.0)
            families["stage"].add_metric(key, svc.stage)
            families["held"].add_metric(key, 1.0 if svc.ramp_held else 0.0)
            if svc.med is not None:
                families["med"].add_metric(key, svc.med)
            families["drained"].add_metric(key, 1.0 if svc.drain is not None else 0.0)
            families["override"].add_metric(key, 1.0 if svc.med_override is not None else 0.0)
            families["suppressed"].add_metric(key, 1.0 if svc.suppressed else 0.0)
            families["penalty"].add_metric(key, svc.penalty)
            families["frozen"].add_metric(key, 1.0 if svc.frozen else 0.0)
            transitions.add_metric(key, svc.transitions)
        yield from families.values()
        yield transitions

    def _routes(self, snap: Snapshot) -> Iterator[Metric]:
        labels = ("service", "prefix", "neighbor")
        announced = _g(
            "route_announced",
            "1 while ExaBGP holds the route (acknowledged `done`), per prefix and neighbor.",
            labels,
        )
        wanted = _g("route_wanted", "1 while the agent wants the route announced.", labels)
        med = _g("route_med", "MED of the route ExaBGP holds (absent while withdrawn).", labels)
        sessions = _g(
            "session_drained",
            "1 while an operator drain of one BGP session applies to the service.",
            ("service", "neighbor"),
        )
        for svc in snap.services:
            for neighbor in svc.session_drains:
                sessions.add_metric([svc.name, neighbor], 1.0)
            for r in svc.routes:
                key = [svc.name, r.prefix, r.neighbor]
                announced.add_metric(key, 1.0 if r.accepted is not None else 0.0)
                wanted.add_metric(key, 1.0 if r.wanted is not None else 0.0)
                if r.accepted is not None:
                    med.add_metric(key, r.accepted.med)
        yield from (announced, wanted, med, sessions)

    def _fleet(self, snap: Snapshot) -> Iterator[Metric]:
        mode = _g(
            "fleet_mode",
            "1 for the fleet coordination mode (standalone: no etcd configured; connected; "
            "degraded: etcd unreachable, no withdraw is granted), 0 for the others.",
            ("mode",),
        )
        for m in FleetMode:
            mode.add_metric([m.value], 1.0 if snap.fleet_mode is m else 0.0)
        yield mode
        if snap.fleet_mode is FleetMode.STANDALONE:
            return
        refusals = _c(
            "fleet_guard_refusals",
            "Withdraws the fleet guard did not permit (the service stays de-preferred), by "
            "reason: too_few, frozen, budget, degraded, unanswered.",
            ("reason",),
        )
        for reason in RefusalReason:
            refusals.add_metric([reason.name.lower()], snap.guard_refusals.get(reason, 0))
        yield refusals
        waiting = _g(
            "fleet_guard_holding",
            "1 while the service's withdraw waits for the fleet guard (kept announced).",
            ("service",),
        )
        for svc in snap.services:
            waiting.add_metric(
                [svc.name], 1.0 if svc.guard and "permitted" not in svc.guard else 0.0
            )
        yield waiting
        info = _g("fleet_info", "1, with the PoP's region as a label.", ("region",))
        info.add_metric([snap.fleet_region], 1.0)
        yield info
        for name, doc, count in (
            (
                "fleet_ctl_revision",
                "The ctl/ revision the fleet's intents follow here.",
                snap.fleet_revision,
            ),
            (
                "fleet_ctl_ignored_keys",
                "ctl/ keys ignored as malformed (see status).",
                len(snap.fleet_problems),
            ),
        ):
            g = _g(name, doc)
            g.add_metric([], count)
            yield g
        drained = _g(
            "fleet_drained",
            "1 while the fleet's layer drains the service here, by source: intent (ctl/intent) "
            "or ramp (outside a ramp's share).",
            ("service", "by"),
        )
        for svc in snap.services:
            for by in ("intent", "ramp"):
                drained.add_metric([svc.name, by], 1.0 if svc.fleet_drained_by == by else 0.0)
        yield drained
        overridden = _g(
            "fleet_guard_overridden",
            "1 while a break-glass drain (`drain --override-fleet`) withdraws the service "
            "without the fleet guard.",
            ("service",),
        )
        for svc in snap.services:
            overridden.add_metric([svc.name], 1.0 if svc.guard_overridden else 0.0)
        yield overridden
        for name, doc, value in (
            (
                "fleet_budget_slots_in_use",
                "Budget slots taken fleet-wide.",
                snap.fleet_slots_in_use,
            ),
            (
                "fleet_budget_slots",
                "Budget slots per window (ctl/budget or the config).",
                snap.fleet_slots,
            ),
            (
                "fleet_contact_age_seconds",
                "Seconds since etcd last answered a keepalive or a linearizable call.",
                snap.fleet_contact_age_s,
            ),
        ):
            if value is not None:
                g = _g(name, doc)
                g.add_metric([], value)
                yield g


def make_registry(
    snapshot: Callable[[], Snapshot], *, monotonic: Callable[[], float] = time.monotonic
) -> CollectorRegistry:
    """A private registry (no process/platform collectors, nothing global) over `snapshot`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, monotonic=monotonic))
    return registry


def render_snapshot(
    snap: Snapshot, accept: str, *, monotonic: Callable[[], float] = time.monotonic
) -> tuple[bytes, str]:
    """The exposition of one fixed snapshot: safe to run off the event loop (measured: 2000
    targets make ~20,000 series and ~280 ms of rendering, which must not stall the probes)."""
    return render(make_registry(lambda: snap, monotonic=monotonic), accept)


def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The exposition body and its content type, negotiated from the scraper's Accept header."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
