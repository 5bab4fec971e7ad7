"""The Prometheus exposition of a snapshot, in the text format or OpenMetrics, rendered at request
time from the agent's snapshot (no registry, no process collectors: only what the agent knows).

Written directly rather than through prometheus_client's collectors and encoders: at 2,000
targets those spend ~10 µs a sample building and escaping Sample tuples (~200 ms a scrape), where
a line written from label strings made once per target name costs well under 1 µs. The tests
check every line against prometheus_client's own encoders for the same families.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TypeAlias

from prometheus_client.utils import floatToGoString

from anycast_agent.control.rendering import Clocks, Encoded, Rows, Writer
from anycast_agent.core.snapshot import Snapshot, TargetSnapshot
from anycast_agent.model import FleetMode, NeighborState, RefusalReason, TargetState

PREFIX = "anycast_agent_"
_go_float: Callable[[float], str] = floatToGoString  # untyped in prometheus_client

# anycast_agent_target_state: one numeric series per target (a label that changed with the state
# would start a new series at every transition). docs/metrics.md lists the same codes.
TARGET_STATE_CODES: dict[TargetState, int] = {
    TargetState.UNKNOWN: 0,
    TargetState.HEALTHY: 1,
    TargetState.SUSPICIOUS: 2,
    TargetState.UNHEALTHY: 3,
    TargetState.RECOVERING: 4,
}


class Format(enum.Enum):
    """An exposition format, by the content type it is served with."""

    TEXT = "text/plain; version=0.0.4; charset=utf-8"
    OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def negotiate(accept: str) -> Format:
    """The format for a scraper's Accept header, chosen as prometheus_client chooses: the first
    OpenMetrics entry without a version or of version 1 or later, unless a `text/plain` entry of
    version 1 or later comes first; the text format otherwise. Every name here is a legacy
    Prometheus name, so no escaping scheme changes a byte."""
    for entry in accept.split(","):
        media, *params = (p.strip() for p in entry.split(";"))
        version = next((p[8:] for p in params if p.startswith("version=")), "")
        recent = version[:1].isdigit() and int(version.split(".")[0]) >= 1
        if media == "application/openmetrics-text" and (not version or recent):
            return Format.OPENMETRICS
        if media == "text/plain" and recent:
            return Format.TEXT
    return Format.TEXT


class Kind(enum.StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its OpenMetrics name (counters without `_total`, info without
    `_info`), type and help text."""

    name: str
    kind: Kind
    doc: str

    @property
    def sample(self) -> str:
        """The name its samples carry."""
        suffix = {Kind.COUNTER: "_total", Kind.INFO: "_info"}.get(self.kind, "")
        return self.name + suffix

    def header(self, fmt: Format) -> str:
        if fmt is Format.OPENMETRICS:
            doc = self.doc.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
            return f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.kind}\n"
        # The text format has no info type: an info family is a gauge named like its sample.
        kind = Kind.GAUGE if self.kind is Kind.INFO else self.kind
        doc = self.doc.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {self.sample} {doc}\n# TYPE {self.sample} {kind}\n"


def _g(name: str, doc: str) -> Family:
    return Family(PREFIX + name, Kind.GAUGE, doc)


def _c(name: str, doc: str) -> Family:
    return Family(PREFIX + name, Kind.COUNTER, doc)


BUILD = Family(PREFIX + "build", Kind.INFO, "The agent's version.")
STARTS = _c("starts", "Agent starts counted in state_dir, respawns by ExaBGP included.")
FLAGS = (
    _g(
        "last_good_config_in_use",
        "1 while the agent runs its last-good config because the given one is invalid.",
    ),
    _g("state_unreadable", "1 when the state file and its last-good copy could not be read."),
    _g("exabgp_channel_up", "1 while the ExaBGP API channel answers."),
    _g("ready", "1 once every service has been decided since the start."),
)
PROGRESS_AGE = _g(
    "last_progress_age_seconds",
    "Seconds since the probe loop or the decision step last made progress.",
)
CHECKER_FAULT = _g(
    "checker_fault",
    "Targets whose last check failed in the agent itself, by reason (errno, resolver); "
    "netlink and canary are 1 while failing. Their health is frozen, not failed.",
)
CANARY_UP = _g("canary_up", "1 while the agent can probe its own loopback canary.")
FD_LIMIT = _g("fd_limit", "The agent's open-file limit (RLIMIT_NOFILE) at start.")
FD_NEEDED = _g("fd_needed", "Open files the config needs at most (targets, margin).")
NEIGHBOR_UP = _g("neighbor_up", "1 while the BGP session is established.")
STATE_WRITE_ERRORS = _c(
    "state_write_errors",
    "State file writes that failed (the operator change they carried was refused).",
)
RESYNC_CORRECTIONS = _c(
    "resync_corrections",
    "Routes a re-read of ExaBGP's adj-rib-out found otherwise than acknowledged, and "
    "corrected (ExaBGP reloaded its own config: R27).",
)
REMOVAL_HELD = _g(
    "removal_held_routes",
    "Routes the config no longer lists, all held back: more than half of what ExaBGP "
    "holds would go (`anycast-agent reload --allow-withdraw` confirms).",
)
COMMANDS_SENT = _c("commands_sent", "Route commands written to ExaBGP.")
COMMANDS_ACKED = _c(
    "commands_acked", "Route commands answered by ExaBGP, by result (done, error, timeout)."
)

TARGET_STATE = _g(
    "target_state",
    "The target's state: 0 unknown, 1 healthy, 2 suspicious, 3 unhealthy, 4 recovering.",
)
TARGET_DURATION = _g("target_probe_duration_seconds", "Latency of the target's last probe.")
TARGET_PROBES = _c("target_probes", "Probes finished, by result (ok, failed).")
TARGET_SKIPPED = _c(
    "target_skipped_slots", "Probe slots skipped because the previous probe was still running."
)
TARGET_TRANSITIONS = _c("target_transitions", "Target state changes.")
PROBE_BUGS = _c(
    "probe_bugs", "Checks whose probe code raised (counted as target failures; a bug to report)."
)
TARGET_FAMILIES = (
    TARGET_STATE,
    TARGET_DURATION,
    TARGET_PROBES,
    TARGET_SKIPPED,
    TARGET_TRANSITIONS,
    PROBE_BUGS,
)

SERVICE_HEALTHY = _g("service_healthy_targets", "Targets counted healthy.")
SERVICE_TOTAL = _g("service_targets", "Targets configured.")
SERVICE_QUORUM = _g("service_quorum_targets", "Healthy targets needed to be up.")
SERVICE_UP = _g(
    "service_up", "1 while the service is healthy and announced, fully or at a ramp stage."
)
RAMP_STAGE = _g("ramp_stage_percent", "Ramp stage: 100 when fully announced, 0 when withdrawn.")
RAMP_HELD = _g("ramp_held", "1 while an operator holds the service's ramp.")
SERVICE_MED = _g("service_med", "The MED announced (absent while withdrawn).")
SERVICE_DRAINED = _g("service_drained", "1 while an operator drain (own or PoP-wide) applies.")
SERVICE_OVERRIDE = _g("service_med_override", "1 while an operator MED override applies.")
SERVICE_SUPPRESSED = _g("service_suppressed", "1 while flap damping keeps the service withdrawn.")
SERVICE_PENALTY = _g("service_damping_penalty", "Flap-damping penalty (decays).")
SERVICE_FROZEN = _g("service_frozen", "1 while a checker fault freezes the service's health.")
SERVICE_TRANSITIONS = _c("service_transitions", "Service UP/DOWN changes.")

ROUTE_ANNOUNCED = _g(
    "route_announced",
    "1 while ExaBGP holds the route (acknowledged `done`), per prefix and neighbor.",
)
ROUTE_WANTED = _g("route_wanted", "1 while the agent wants the route announced.")
ROUTE_MED = _g("route_med", "MED of the route ExaBGP holds (absent while withdrawn).")
SESSION_DRAINED = _g(
    "session_drained", "1 while an operator drain of one BGP session applies to the service."
)

FLEET_MODE = _g(
    "fleet_mode",
    "1 for the fleet coordination mode (standalone: no etcd configured; connected; "
    "degraded: etcd unreachable, no withdraw is granted), 0 for the others.",
)
FLEET_REFUSALS = _c(
    "fleet_guard_refusals",
    "Withdraws the fleet guard did not permit (the service stays de-preferred), by "
    "reason: too_few, frozen, budget, degraded, unanswered.",
)
FLEET_HOLDING = _g(
    "fleet_guard_holding",
    "1 while the service's withdraw waits for the fleet guard (kept announced).",
)
FLEET_OVERRIDDEN = _g(
    "fleet_guard_overridden",
    "1 while a break-glass drain (`drain --override-fleet`) withdraws the service "
    "without the fleet guard.",
)
FLEET_INFO = _g("fleet_info", "1, with the PoP's region as a label.")
FLEET_CTL_REVISION = _g("fleet_ctl_revision", "The ctl/ revision the fleet's intents follow here.")
FLEET_CTL_IGNORED = _g("fleet_ctl_ignored_keys", "ctl/ keys ignored as malformed (see status).")
FLEET_DRAINED = _g(
    "fleet_drained",
    "1 while the fleet's layer drains the service here, by source: intent (ctl/intent) "
    "or ramp (outside a ramp's share).",
)
FLEET_SLOTS_IN_USE = _g("fleet_budget_slots_in_use", "Budget slots taken fleet-wide.")
FLEET_SLOTS = _g("fleet_budget_slots", "Budget slots per window (ctl/budget or the config).")
FLEET_CONTACT_AGE = _g(
    "fleet_contact_age_seconds",
    "Seconds since etcd last answered a keepalive or a linearizable call.",
)


# --- values and labels ------------------------------------------------------------------------


def num(value: float) -> str:
    """A sample value as Prometheus writes it (Go's float formatting, as floatToGoString)."""
    if value.__class__ is int:
        if 0 <= value < 1_000_000:
            return f"{value}.0"
    elif value.__class__ is float and -math.inf < value < 1_000_000.0:
        return repr(value)  # Go differs from Python only from 1e6 up, and for inf and NaN
    return _go_float(value)


def _flag(on: bool) -> str:
    return "1.0" if on else "0.0"


def escape(value: str) -> str:
    """A label value, escaped as both formats want it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


@lru_cache(maxsize=1 << 16)
def _target_labels(service: str, target: str) -> tuple[str, str, str]:
    """A target's label sets, plain and with `result` ok/failed (labels in name order, as
    prometheus_client writes them). Made once per name: names only change with the config."""
    inner = f'service="{escape(service)}",target="{escape(target)}"'
    return "{" + inner + "}", '{result="ok",' + inner + "}", '{result="failed",' + inner + "}"


@lru_cache(maxsize=1 << 12)
def _service_labels(service: str) -> str:
    return f'{{service="{escape(service)}"}}'


# --- the exposition ---------------------------------------------------------------------------


class _Exposition:
    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.out = Writer()

    def family(self, family: Family, samples: Iterable[tuple[str, str]] = ()) -> None:
        """`samples`: (label set, value) pairs, the label set "" or `{...}`."""
        name = family.sample
        self.out.text(family.header(self.fmt))
        self.out.text("".join([f"{name}{labels} {value}\n" for labels, value in samples]))

    def lines(self, family: Family, lines: list[str]) -> None:
        """`lines`: whole sample lines, written as they are."""
        self.out.text(family.header(self.fmt))
        self.out.text("".join(lines))

    def one(self, family: Family, value: str) -> None:
        self.family(family, (("", value),))

    def age(self, family: Family, since: float) -> None:
        """A family of one sample: seconds since the monotonic instant `since`, at the request."""
        self.out.text(family.header(self.fmt))
        self.out.live(partial(_age_line, family.sample, since))


def _age_line(name: str, since: float, clocks: Clocks) -> bytes:
    return f"{name} {num(max(0.0, clocks.mono - since))}\n".encode()


def render(snap: Snapshot, fmt: Format, rows: TargetRows | None = None) -> Encoded:
    """The exposition of `snap` (safe to run off the event loop: it reads nothing else but
    `rows`, the targets' lines written for earlier snapshots)."""
    x = _Exposition(fmt)
    _agent(x, snap)
    _targets(x, snap, rows or target_rows())
    _services(x, snap)
    _routes(x, snap)
    _fleet(x, snap)
    if fmt is Format.OPENMETRICS:
        x.out.text("# EOF\n")
    return x.out.done()


def _agent(x: _Exposition, snap: Snapshot) -> None:
    x.family(BUILD, ((f'{{version="{escape(snap.version)}"}}', "1.0"),))
    x.one(STARTS, num(snap.starts))
    flags = (snap.last_good_fallback, snap.state_unreadable, snap.channel_up, snap.ready)
    for family, on in zip(FLAGS, flags, strict=True):
        x.one(family, _flag(on))
    x.age(PROGRESS_AGE, snap.last_progress)
    x.family(
        CHECKER_FAULT,
        ((f'{{reason="{r.value}"}}', num(n)) for r, n in snap.checker_faults.items()),
    )
    if snap.canary_up is not None:
        x.one(CANARY_UP, _flag(snap.canary_up))
    x.one(FD_LIMIT, num(snap.fd_limit))
    x.one(FD_NEEDED, num(snap.fd_needed))
    x.family(
        NEIGHBOR_UP,
        (
            (f'{{neighbor="{escape(a)}"}}', _flag(s is NeighborState.ESTABLISHED))
            for a, s in sorted(snap.neighbors.items())
        ),
    )
    x.one(STATE_WRITE_ERRORS, num(snap.state_write_errors))
    x.one(RESYNC_CORRECTIONS, num(snap.resync_corrections))
    x.one(REMOVAL_HELD, num(snap.removal_held))
    x.one(COMMANDS_SENT, num(snap.commands_sent))
    x.family(
        COMMANDS_ACKED,
        ((f'{{result="{r.value}"}}', num(n)) for r, n in sorted(snap.commands_acked.items())),
    )


_STATE_VALUES = {s: f" {c}.0\n" for s, c in TARGET_STATE_CODES.items()}
_STATE, _DURATION, _PROBES, _SKIPPED, _TRANSITIONS, _BUGS = (f.sample for f in TARGET_FAMILIES)
TargetLines: TypeAlias = tuple[str, str, str, str, str, str]  # one item per target family


def _target_lines(t: TargetSnapshot, service: str) -> TargetLines:
    """Probes: ok then failed; no duration before the first probe."""
    key, ok, failed = _target_labels(service, t.name)
    duration = "" if t.last_latency_s is None else f"{_DURATION}{key} {num(t.last_latency_s)}\n"
    return (
        f"{_STATE}{key}{_STATE_VALUES[t.state]}",
        duration,
        f"{_PROBES}{ok} {num(t.probes_ok)}\n{_PROBES}{failed} {num(t.probes_failed)}\n",
        f"{_SKIPPED}{key} {num(t.skipped_slots)}\n",
        f"{_TRANSITIONS}{key} {num(t.transitions)}\n",
        f"{_BUGS}{key} {num(t.probe_bugs)}\n",
    )


TargetRows: TypeAlias = Rows[TargetSnapshot, str, TargetLines]  # both formats write the same


def target_rows() -> TargetRows:
    return Rows(_target_lines)


def _targets(x: _Exposition, snap: Snapshot, rows: TargetRows) -> None:
    # Thousands of targets, seven lines each, each family's lines contiguous in the output:
    # every target's lines made (or found) once, then each family joined from them.
    lines = rows.writer(every_row=True)
    written = [lines(t, svc.name) for svc in snap.services for t in svc.targets]
    for i, family in enumerate(TARGET_FAMILIES):
        x.lines(family, [t[i] for t in written])


def _services(x: _Exposition, snap: Snapshot) -> None:
    services = [(_service_labels(s.name), s) for s in snap.services]
    x.family(SERVICE_HEALTHY, ((k, num(s.healthy)) for k, s in services))
    x.family(SERVICE_TOTAL, ((k, num(s.total)) for k, s in services))
    x.family(SERVICE_QUORUM, ((k, num(s.quorum)) for k, s in services))
    x.family(SERVICE_UP, ((k, _flag(s.announcing)) for k, s in services))
    x.family(RAMP_STAGE, ((k, num(s.stage)) for k, s in services))
    x.family(RAMP_HELD, ((k, _flag(s.ramp_held)) for k, s in services))
    x.family(SERVICE_MED, ((k, num(s.med)) for k, s in services if s.med is not None))
    x.family(SERVICE_DRAINED, ((k, _flag(s.drain is not None)) for k, s in services))
    x.family(SERVICE_OVERRIDE, ((k, _flag(s.med_override is not None)) for k, s in services))
    x.family(SERVICE_SUPPRESSED, ((k, _flag(s.suppressed)) for k, s in services))
    x.family(SERVICE_PENALTY, ((k, num(s.penalty)) for k, s in services))
    x.family(SERVICE_FROZEN, ((k, _flag(s.frozen)) for k, s in services))
    x.family(SERVICE_TRANSITIONS, ((k, num(s.transitions)) for k, s in services))


def _routes(x: _Exposition, snap: Snapshot) -> None:
    announced: list[tuple[str, str]] = []
    wanted: list[tuple[str, str]] = []
    med: list[tuple[str, str]] = []
    sessions: list[tuple[str, str]] = []
    for svc in snap.services:
        service = escape(svc.name)
        for neighbor in svc.session_drains:
            sessions.append((f'{{neighbor="{escape(neighbor)}",service="{service}"}}', "1.0"))
        for r in svc.routes:
            key = f'{{neighbor="{escape(r.neighbor)}",prefix="{r.prefix}",service="{service}"}}'
            announced.append((key, _flag(r.accepted is not None)))
            wanted.append((key, _flag(r.wanted is not None)))
            if r.accepted is not None:
                med.append((key, num(r.accepted.med)))
    x.family(ROUTE_ANNOUNCED, announced)
    x.family(ROUTE_WANTED, wanted)
    x.family(ROUTE_MED, med)
    x.family(SESSION_DRAINED, sessions)


def _fleet(x: _Exposition, snap: Snapshot) -> None:
    x.family(
        FLEET_MODE, ((f'{{mode="{m.value}"}}', _flag(snap.fleet_mode is m)) for m in FleetMode)
    )
    if snap.fleet_mode is FleetMode.STANDALONE:
        return
    x.family(
        FLEET_REFUSALS,
        (
            (f'{{reason="{r.name.lower()}"}}', num(snap.guard_refusals.get(r, 0)))
            for r in RefusalReason
        ),
    )
    x.family(
        FLEET_HOLDING,
        (
            (_service_labels(s.name), _flag(bool(s.guard) and "permitted" not in s.guard))
            for s in snap.services
        ),
    )
    x.family(
        FLEET_OVERRIDDEN,
        ((_service_labels(s.name), _flag(s.guard_overridden)) for s in snap.services),
    )
    x.family(FLEET_INFO, ((f'{{region="{escape(snap.fleet_region)}"}}', "1.0"),))
    x.one(FLEET_CTL_REVISION, num(snap.fleet_revision))
    x.one(FLEET_CTL_IGNORED, num(len(snap.fleet_problems)))
    x.family(
        FLEET_DRAINED,
        (
            (f'{{by="{by}",service="{escape(s.name)}"}}', _flag(s.fleet_drained_by == by))
            for s in snap.services
            for by in ("intent", "ramp")
        ),
    )
    if snap.fleet_slots_in_use is not None:
        x.one(FLEET_SLOTS_IN_USE, num(snap.fleet_slots_in_use))
    if snap.fleet_slots is not None:
        x.one(FLEET_SLOTS, num(snap.fleet_slots))
    if snap.fleet_last_contact is not None:
        x.age(FLEET_CONTACT_AGE, snap.fleet_last_contact)
