"""Chaos R20: the wall clock steps an hour forward and back in the middle of a ramp and of a
drain grace. Every duration runs on the monotonic clock: no stage comes early, no grace is cut
or stretched (RELIABILITY.md R20). The agent runs under libfaketime, its wall clock read from
a file the test rewrites; its monotonic clock stays real."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.integration.agent_lab import AgentLab, ServiceSpec
from tests.lab.fixtures import PopLabFactory
from tests.lab.wait import wait_for

WEB = "192.0.2.10/32"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
STAGE_HOLD_S = 3.0
DRAIN_GRACE_S = 3.0
MED_DRAIN = 4294967294

only_50 = pytest.mark.parametrize("exabgp_version", ["5.0"])


def path_length(agent: AgentLab) -> int | None:
    routes = agent.lab.bird.route(WEB)
    return len(routes[0].as_path) if routes else None


@only_50
def test_clock_steps_neither_hurry_nor_stall_a_ramp_or_a_drain(
    pop_lab_factory: PopLabFactory, exabgp_version: str
) -> None:
    assert LIBFAKETIME.exists(), "libfaketime is missing: make deps installs Debian's faketime"
    lab = pop_lab_factory(exabgp_version=exabgp_version)
    clock = lab.workdir / "faketime"
    clock.write_text("+0\n")
    ramp = {"stages": [50, 100], "stage_hold": STAGE_HOLD_S, "mode": "prepend"}
    spec = ServiceSpec("web", [WEB], edges=[0], extra={"ramp": ramp, "drain_grace": DRAIN_GRACE_S})
    agent = AgentLab(lab, [spec])
    agent.start(
        agent_env={
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(clock),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
    )
    # The ramp: 50% (the local AS twice), then 100% after the stage hold.
    wait_for(lambda: path_length(agent), lambda n: n == 2, timeout_s=10, what="the 50% stage")
    staged = time.monotonic()
    clock.write_text("+1h\n")
    wait_for(lambda: path_length(agent), lambda n: n == 1, timeout_s=10, what="the 100% stage")
    held = time.monotonic() - staged
    assert STAGE_HOLD_S - 0.5 <= held <= STAGE_HOLD_S + 1.5, held
    # The drain: de-preferred, then withdrawn after the grace, through a step back.
    lab.pop.run(
        [sys.executable, "-m", "anycast_agent", "drain", "web", "--reason", "clock drill",
         "--config", str(agent.config_path)]
    )  # fmt: skip
    drained = time.monotonic()
    wait_for(lambda: [r.med for r in lab.bird.route(WEB)], lambda m: m == [MED_DRAIN], timeout_s=5)
    clock.write_text("-1h\n")
    wait_for(lambda: lab.bird.route(WEB), lambda r: not r, timeout_s=10, what="the withdraw")
    grace = time.monotonic() - drained
    assert DRAIN_GRACE_S - 0.5 <= grace <= DRAIN_GRACE_S + 1.5, grace
    print(
        f"\n[R20] wall clock +1h mid-stage: stage held {held:.2f}s (hold {STAGE_HOLD_S}s); "
        f"-1h mid-drain: grace {grace:.2f}s (drain_grace {DRAIN_GRACE_S}s)"
    )
