"""Per-target health state machine: probe results in, state transitions out (DESIGN §3.2)."""

from __future__ import annotations

from dataclasses import dataclass

from anycast_agent.model import TargetState

S = TargetState


@dataclass(frozen=True, slots=True)
class Health:
    """A target's state and its consecutive success/failure counts."""

    state: TargetState = S.UNKNOWN
    successes: int = 0
    failures: int = 0

    @property
    def counts_healthy(self) -> bool:
        # A suspicious target has not failed `fall` times yet: it still carries traffic.
        return self.state in (S.HEALTHY, S.SUSPICIOUS)

    @property
    def decided(self) -> bool:
        return self.state is not S.UNKNOWN


def observe(h: Health, ok: bool, *, rise: int, fall: int) -> Health:
    """The health after one more probe result."""
    successes = h.successes + 1 if ok else 0
    failures = 0 if ok else h.failures + 1
    match h.state, ok:
        case ((S.UNKNOWN | S.RECOVERING | S.UNHEALTHY), True):
            state = (
                S.HEALTHY
                if successes >= rise
                else (S.UNKNOWN if h.state is S.UNKNOWN else S.RECOVERING)
            )
        case ((S.HEALTHY | S.SUSPICIOUS), True):
            state = S.HEALTHY
        case ((S.UNKNOWN | S.HEALTHY | S.SUSPICIOUS), False):
            if failures >= fall:
                state = S.UNHEALTHY
            else:
                state = S.UNKNOWN if h.state is S.UNKNOWN else S.SUSPICIOUS
        case ((S.RECOVERING | S.UNHEALTHY), False):
            state = S.UNHEALTHY
        case _:  # pragma: no cover - the match above is exhaustive
            raise AssertionError(h.state)
    return Health(state, successes, failures)
