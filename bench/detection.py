"""Detection bench: an edge fails at a recorded time; when does the withdraw reach the upstream?

Two `aab-` namespaces joined by a veth: `up` runs GoBGP (the upstream, `bench.upstream`),
`pop` runs ExaBGP, the edge targets (one nginx) and the fault switch (an nft rule). The agent
runs as ExaBGP's API process exactly as deployed (config rendered by `anycast-agent render
exabgp`), probing one measured service `web` (one edge, its own address) plus N - 1 healthy
background targets. Each trial sleeps a random part of the interval (so the fault lands at a
random point of the probe grid), switches the fault on, waits for the withdraw of the
service's prefix in the upstream's RIB, switches the fault off and waits for the re-announce.

Figures per trial, all on the wall clock (`time.time()` here, the agent's log timestamps):
- injection → upstream: the nft command returned → the withdraw line read from the monitor;
- decision → upstream: the agent's log line `target web/edge1 suspicious -> unhealthy` (the
  probe that completed the fall count; the logger keeps milliseconds, so up to 1 ms early)
  → the same withdraw line; and, to split that, decision → the agent's `withdraw ...` log
  line, written just before the command goes to ExaBGP (the agent's own share).
The same trials run against ExaBGP's healthcheck (one process, `--withdraw-on-down`, curl,
same interval/rise/fall); it writes no timestamped decision, so only injection → upstream.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.nginx import Nginx
from bench.sandbox import Sandbox, run
from bench.stats import ms, percentile
from bench.targets import HTTP_PORT, LOCAL, NEIGHBOR, Timing, agent_config, write_config
from bench.upstream import GOBGP, GOBGPD, Gobgp
from tests.lab.exabgp import ExabgpNeighbor, ExabgpProcess, exabgp_env, render_exabgp_conf

ROOT = Path(__file__).resolve().parent.parent
LOCAL_AS, UPSTREAM_AS = 65001, 65000
MEASURED_NET = ipaddress.IPv6Network("2001:db8:c::/64")
MEASURED_ADDR = str(MEASURED_NET.network_address + 1)
MEASURED_URL = f"http://[{MEASURED_ADDR}]:{HTTP_PORT}/health"
MEASURED_PREFIX = "198.51.100.250/32"  # outside the background services' prefixes
SERVICE, TARGET = "web", "edge1"
DECISION = re.compile(
    rf"^(\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}) \w+ target {SERVICE}/{TARGET} "
    r"\w+ -> unhealthy",
    re.MULTILINE,
)
COMMAND = re.compile(
    rf"^(\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}) \w+ withdraw {re.escape(MEASURED_PREFIX)} to",
    re.MULTILINE,
)
FAULTS = {
    # What a stopped server looks like: the kernel answers the SYN with a reset.
    "refuse": "reject with tcp reset",
    # A dead host or a black-holed path: the probe times out.
    "drop": "drop",
}
START_TIMEOUT_S = 60.0
TRIAL_TIMEOUT_S = 20.0
SETTLE_S = 1.0


@dataclass(frozen=True, slots=True)
class DetectionPlan:
    n: int  # targets the agent probes, the measured one included
    trials: int
    python: str
    exabgp: str
    fault: str = "refuse"
    engines: tuple[str, ...] = ("anycast-agent", "exabgp-healthcheck")
    timing: Timing = field(default_factory=Timing)
    label: str = "detection"  # names this case's files in the work directory


# Fast mode as issue 18 sizes it: 100 ms probes, an 80 ms timeout, three failures to withdraw.
FAST = Timing(interval_s=0.1, timeout_s=0.08, fall=3, rise=2)


@dataclass(frozen=True, slots=True)
class FastPlan:
    """Fast-mode detection, the agent alone (ExaBGP's healthcheck counts its timeout in whole
    seconds): each of `faults` at `FAST` timing, then each of `slow_faults` at the default 1 s
    timing, all in one lab, so the two timings are measured side by side."""

    n: int
    trials: int
    python: str
    exabgp: str
    faults: tuple[str, ...] = ("refuse", "drop")
    slow_faults: tuple[str, ...] = ("refuse",)

    def cases(self) -> list[DetectionPlan]:
        timings = [(FAST, "fast", f) for f in self.faults]
        timings += [(Timing(), "slow", f) for f in self.slow_faults]
        return [
            DetectionPlan(n=self.n, trials=self.trials, python=self.python, exabgp=self.exabgp,
                          fault=fault, engines=("anycast-agent",), timing=timing,
                          label=f"{name}-{fault}")
            for timing, name, fault in timings
        ]  # fmt: skip


def unavailable(plan: DetectionPlan) -> str:
    """ "" when everything the bench runs is installed, else what is missing."""
    for tool in (GOBGPD, GOBGP, "nft", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make deps)"
    if not Path(plan.exabgp).exists():
        return f"no ExaBGP at {plan.exabgp}"
    return ""


def run_detection(work: Path, plan: DetectionPlan) -> dict[str, Any]:
    if note := unavailable(plan):
        return {"skipped": note}
    with edge_lab(work) as (pop, gobgp):
        return _case(pop, gobgp, work, plan)


def run_fast_detection(work: Path, plan: FastPlan) -> dict[str, Any]:
    """Every case of the plan in one lab; each with injection → upstream minus fall x interval
    (the floor: no engine can withdraw before `fall` probes have failed)."""
    cases = plan.cases()
    if note := unavailable(cases[0]):
        return {"skipped": note}
    out: dict[str, Any] = {"n": plan.n, "trials": plan.trials, "cases": []}
    with edge_lab(work) as (pop, gobgp):
        for case in cases:
            result = _case(pop, gobgp, work, case)
            floor_ms = 1000 * case.timing.fall * case.timing.interval_s
            agent = result["engines"]["anycast-agent"]
            if figure := agent.get("inject_to_upstream_ms"):
                agent["inject_to_upstream_over_floor_ms"] = {
                    k: round(figure[k] - floor_ms, 2) for k in ("p50", "p99", "min", "max")
                }
            result["floor_ms"] = round(floor_ms, 2)
            out["cases"].append(result)
    return out


@contextlib.contextmanager
def edge_lab(work: Path) -> Iterator[tuple[Sandbox, Gobgp]]:
    """The two namespaces, nginx serving every target and GoBGP monitored, for one or more
    cases."""
    with Sandbox("up") as up, Sandbox("pop") as pop:
        _link(up, pop)
        nginx = Nginx(pop, work / "nginx-detection")
        nginx.start()
        pop.ip("-6", "route", "add", "local", str(MEASURED_NET), "dev", "lo")
        gobgp = Gobgp(up, work / "gobgp", address=NEIGHBOR, local_as=UPSTREAM_AS,
                      peer=LOCAL, peer_as=LOCAL_AS)  # fmt: skip
        gobgp.start()
        yield pop, gobgp


def _case(pop: Sandbox, gobgp: Gobgp, work: Path, plan: DetectionPlan) -> dict[str, Any]:
    t = plan.timing
    result: dict[str, Any] = {
        "label": plan.label,
        "n": plan.n,
        "trials": plan.trials,
        "interval_s": t.interval_s,
        "timeout_s": t.timeout_s,
        "fall": t.fall,
        "rise": t.rise,
        "fault": f"nft `{FAULTS[plan.fault]}` for {MEASURED_ADDR} port {HTTP_PORT}",
        "fault_kind": plan.fault,
        "upstream": _first_line([GOBGPD, "--version"]),
        "engines": {},
    }
    fault = Fault(pop, plan.fault)
    for engine in plan.engines:
        conf = (
            _agent_exabgp_conf(work, plan)
            if engine == "anycast-agent"
            else _healthcheck_exabgp_conf(work, plan)
        )
        result["engines"][engine] = _trials(pop, gobgp, fault, work, engine, conf, plan)
        print(f"  detection {plan.label} {engine} N={plan.n}: done", flush=True)
    return result


class Fault:
    """The measured edge's failure: one nft rule in the PoP's output path, on or off."""

    def __init__(self, box: Sandbox, kind: str) -> None:
        self.box = box
        self.rule = (
            f"add rule inet aab out ip6 daddr {MEASURED_ADDR} tcp dport {HTTP_PORT} {FAULTS[kind]}"
        )
        self._nft("add table inet aab")
        self._nft("add chain inet aab out { type filter hook output priority 0; }")

    def _nft(self, command: str) -> None:
        run(self.box.argv(["nft", command]))

    def on(self) -> float:
        """Switch the fault on; the wall time the rule was in force by."""
        self._nft(self.rule)
        return time.time()

    def off(self) -> float:
        self._nft("flush chain inet aab out")
        return time.time()


def _link(up: Sandbox, pop: Sandbox) -> None:
    up.ip("link", "add", "aab-u", "type", "veth", "peer", "name", "aab-p", "netns", pop.name)
    up.ip("addr", "add", f"{NEIGHBOR}/24", "dev", "aab-u")
    pop.ip("addr", "add", f"{LOCAL}/24", "dev", "aab-p")
    up.ip("link", "set", "aab-u", "up")
    pop.ip("link", "set", "aab-p", "up")


def _agent_exabgp_conf(work: Path, plan: DetectionPlan) -> Path:
    state = work / f"state-{plan.label}"
    state.mkdir(parents=True, exist_ok=True)
    config = agent_config(plan.n - 1, state, timing=plan.timing)
    services: list[dict[str, Any]] = config["services"]  # type: ignore[assignment]
    services.append(
        {
            "name": SERVICE,
            "prefixes": [MEASURED_PREFIX],
            "ramp": {"stages": [100]},
            # Twenty flaps in a few minutes would be damped; the trials measure detection.
            "damping": {"enabled": False},
            "targets": [{"name": TARGET, "http": {"url": MEASURED_URL}}],
        }
    )
    return agent_exabgp_conf(work, plan.label, config, plan.python)


def agent_exabgp_conf(work: Path, label: str, config: dict[str, Any], python: str) -> Path:
    """ExaBGP's config running the agent with `config` as its API process, rendered by the
    agent itself (`anycast-agent render exabgp`), as deployed."""
    agent_yaml = write_config(work / f"agent-{label}.yaml", config)
    rendered = run(
        [python, "-m", "anycast_agent", "render", "exabgp", "--config", str(agent_yaml),
         "--agent", f"{python} -m anycast_agent"]
    )  # fmt: skip
    conf = work / f"exabgp-agent-{label}.conf"
    conf.write_text(rendered)
    return conf


def _healthcheck_exabgp_conf(work: Path, plan: DetectionPlan) -> Path:
    t = plan.timing
    curl = f"curl -gsf -o /dev/null -m {t.timeout_s:g} {MEASURED_URL}"
    argv = [
        plan.python, "-m", "exabgp", "healthcheck", "--no-syslog", "--name", SERVICE,
        "--cmd", curl, "--ip", MEASURED_PREFIX, "--no-ip-setup", "--withdraw-on-down",
        "--interval", f"{t.interval_s:g}", "--fast-interval", f"{t.interval_s:g}",
        "--timeout", str(max(1, round(t.timeout_s))),  # whole seconds (signal.alarm)
        "--rise", str(t.rise), "--fall", str(t.fall),
    ]  # fmt: skip
    # ExaBGP's `run` cannot quote an argument with spaces: go through a script.
    script = work / f"healthcheck-{plan.label}.sh"
    script.write_text("#!/bin/sh\nexec " + shlex.join(argv) + "\n")
    script.chmod(0o755)
    neighbor = ExabgpNeighbor(
        peer_address=NEIGHBOR, local_address=LOCAL, router_id=LOCAL, local_as=LOCAL_AS,
        peer_as=UPSTREAM_AS, hold_time_s=9, processes=("healthcheck",),
    )  # fmt: skip
    conf = work / f"exabgp-healthcheck-{plan.label}.conf"
    conf.write_text(
        render_exabgp_conf([neighbor], [ExabgpProcess("healthcheck", (str(script),), "text")])
    )
    return conf


def _trials(
    pop: Sandbox, gobgp: Gobgp, fault: Fault, work: Path, engine: str, conf: Path,
    plan: DetectionPlan,
) -> dict[str, Any]:  # fmt: skip
    log = work / f"exabgp-{engine}-{plan.label}.log"
    started = time.time()
    exa = pop.spawn(
        [plan.exabgp, str(conf)],
        stdout=log,
        stderr=log,
        env=exabgp_env({"PYTHONPATH": str(ROOT)}),
    )
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    rng = random.Random(11)
    try:
        gobgp.wait(MEASURED_PREFIX, withdrawn=False, after=started, timeout_s=START_TIMEOUT_S)
        time.sleep(2 * plan.timing.interval_s * plan.timing.rise)  # background targets decide
        for _ in range(plan.trials):
            if exa.poll() is not None:
                errors.append(f"ExaBGP exited {exa.returncode}")
                break
            time.sleep(rng.random() * plan.timing.interval_s)
            injected = fault.on()
            try:
                seen = gobgp.wait(
                    MEASURED_PREFIX, withdrawn=True, after=injected, timeout_s=TRIAL_TIMEOUT_S
                )
            except TimeoutError as exc:
                errors.append(str(exc))
                fault.off()
                continue
            restored = fault.off()
            samples.append({"injected": injected, "upstream": seen.at})
            try:
                gobgp.wait(
                    MEASURED_PREFIX, withdrawn=False, after=restored, timeout_s=TRIAL_TIMEOUT_S
                )
            except TimeoutError as exc:
                errors.append(str(exc))
                break
            time.sleep(SETTLE_S)
    finally:
        fault.off()
        pop.stop(exa)
    text = log.read_text(errors="replace") if engine == "anycast-agent" else ""
    return summarise(samples, _times(DECISION, text), plan.trials, errors, _times(COMMAND, text))


def _times(pattern: re.Pattern[str], log_text: str) -> list[float]:
    """Wall times of the agent's log lines matching `pattern` (local time, ms kept)."""
    return [
        datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
        for m in pattern.finditer(log_text)
    ]


def summarise(
    samples: list[dict[str, Any]],
    decisions: list[float],
    trials: int,
    errors: list[str],
    commands: list[float] | None = None,
) -> dict[str, Any]:
    """Per-trial figures and their p50/p99 (nearest rank: with 20 trials p99 is the max)."""
    rows = []
    for s in samples:
        row: dict[str, Any] = {"inject_to_upstream_ms": ms(s["upstream"] - s["injected"])}
        # The decision of this trial: the last one logged before the withdraw was seen.
        made = [d for d in decisions if s["injected"] - 0.001 <= d <= s["upstream"]]
        if made:
            row["inject_to_decision_ms"] = ms(made[-1] - s["injected"])
            row["decision_to_upstream_ms"] = ms(s["upstream"] - made[-1])
            # When the agent logged the withdraw it then wrote to ExaBGP: the agent's share.
            sent = [c for c in commands or () if made[-1] - 0.001 <= c <= s["upstream"]]
            if sent:
                row["decision_to_command_ms"] = ms(sent[0] - made[-1])
        rows.append(row)
    out: dict[str, Any] = {"trials": trials, "completed": len(rows)}
    keys = (
        "inject_to_upstream_ms",
        "inject_to_decision_ms",
        "decision_to_upstream_ms",
        "decision_to_command_ms",
    )
    for key in keys:
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = {
                "p50": percentile(values, 50),
                "p99": percentile(values, 99),
                "min": min(values),
                "max": max(values),
                "count": len(values),
            }
    out["samples"] = rows
    if errors:
        out["errors"] = errors
    return out


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else ""


def exabgp_beside(python: str) -> str:
    """The `exabgp` script installed beside the interpreter that runs the agent."""
    return str(Path(python).parent / "exabgp")


if __name__ == "__main__":  # pragma: no cover - a manual run of this part alone
    sys.exit("run `python -m bench --parts detection`")
