"""Chaos R9 with two PoPs, judged at the upstream and the client: the unit's opt-in ExecStop
(`drain --all --wait --on-stop`) moves traffic away before the withdraw, no client request
fails, and the drain is not there at the next start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.lab.bird_output import BirdRoute
from tests.lab.prereqs import require_lab
from tests.lab.topology_description import QUICK_TIMERS, VIP_PREFIX
from tests.lab.twopop import PopNode, TwoPopLab
from tests.lab.wait import wait_for

MED_DRAIN = 4294967294
GRACE_S = 3
REPO = Path(__file__).resolve().parents[2]
# The drop-in's command line, as systemd would run it (systemd/exabgp-anycast.service.d/).
ON_STOP = ["drain", "--all", "--wait", "--on-stop"]


def agent_pids(pop: PopNode) -> list[int]:
    assert pop.exabgp is not None
    pids = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pop.exabgp.pid and b"anycast_agent" in cmdline:
            pids.append(int(entry))
    return pids


def cli(pop: PopNode, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "anycast_agent", *args, "--config", str(pop.config_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        ["ip", "netns", "exec", pop.netns.name, *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )


def test_drain_on_stop_moves_traffic_first_and_the_next_start_is_not_drained() -> None:
    require_lab("5.0")
    with TwoPopLab(exabgp_version="5.0", timers=QUICK_TIMERS) as lab:
        pop1, pop2 = lab.pops["pop1"], lab.pops["pop2"]
        pop1.start(ramp=False)
        pop2.start(ramp=False)
        wait_for(lab.paths, lambda p: set(p) == {"pop1", "pop2"}, timeout_s=30, what="both")
        config = yaml.safe_load(pop1.config_path.read_text())
        config.setdefault("defaults", {})["drain_grace"] = f"{GRACE_S}s"
        pop1.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        reload = cli(pop1, "reload")
        assert reload.returncode == 0, reload.stderr
        client = lab.start_client(interval_s=0.05, timeout_s=0.3, max_s=40)
        wait_for(client.samples, lambda s: any(x.answer == "pop1" for x in s), timeout_s=10)

        # systemd's ExecStop, with the upstream watched while it runs.
        stop = subprocess.Popen(
            ["ip", "netns", "exec", pop1.netns.name, sys.executable, "-m", "anycast_agent",
             *ON_STOP, "--config", str(pop1.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        # (when, pop1's path, the best path's PoP), each from one read of BIRD's RIB: two reads
        # could straddle the change.
        seen: list[tuple[float, BirdRoute | None, str | None]] = []
        started = time.monotonic()
        while stop.poll() is None and time.monotonic() - started < 30:
            routes = lab.bird.route(VIP_PREFIX)
            pop_of = lab.description.pop_by_address
            p1 = next((r for r in routes if pop_of(r.neighbor) == "pop1"), None)
            best = next((pop_of(r.neighbor) for r in routes if r.primary), None)
            if not seen or seen[-1][1:] != (p1, best):
                seen.append((time.monotonic() - started, p1, best))
            time.sleep(0.05)
        out, err = stop.communicate(timeout=5)
        took = time.monotonic() - started
        assert stop.returncode == 0, err
        assert "withdrawn: ExaBGP holds none of the drained routes" in out
        deprefer_at = next(t for t, p1, _ in seen if p1 is not None and p1.med == MED_DRAIN)
        best_pop2_at = next(t for t, _, best in seen if best == "pop2")
        gone_at = next(t for t, p1, _ in seen if p1 is None)
        print(
            f"\n[R9] ExecStop took {took:.1f}s: de-preferred at +{deprefer_at:.2f}s (best path "
            f"via pop2 at +{best_pop2_at:.2f}s), withdrawn at +{gone_at:.2f}s"
        )
        assert deprefer_at <= best_pop2_at < gone_at  # traffic moved before the withdraw
        assert gone_at - deprefer_at >= GRACE_S - 0.5
        time.sleep(1.0)  # the client keeps asking after the withdraw
        client.stop()
        failed = [s for s in client.samples() if s.answer is None]
        assert not failed, failed[:5]

        # The next start is not drained: the state file holds no drain, and a new agent (here
        # the one ExaBGP respawns) announces again.
        state_file = lab.workdir / "pop1-state" / "state.json"
        assert not state_file.exists() or json.loads(state_file.read_text())["drains"] == []
        old = agent_pids(pop1)
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        wait_for(lab.paths, lambda p: "pop1" in p, timeout_s=20, what="pop1 announced again")
        status = cli(pop1, "status", "--json")
        assert all(s["drain"] is None for s in json.loads(status.stdout)["services"])
