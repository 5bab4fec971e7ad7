"""`python -m bench`: run every bench, write bench/results/<date>.json, print the tables."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import sandbox
from bench.control_plane import SMOKE, ControlPlan, parse_trees, run_control_plane, this_tree
from bench.detection import (
    FAULTS,
    DetectionPlan,
    FastPlan,
    exabgp_beside,
    run_detection,
    run_fast_detection,
)
from bench.knee import KneePlan, run_knee
from bench.loss import LossPlan, run_loss
from bench.probe_scale import ScalePlan, run_probe_scale
from bench.procstat import loadavg, machine
from bench.report import haproxy_ratios, markdown, performance_doc, ratio, targets, versions
from bench.sections import dated_section, kept_dated_sections, with_dated_section

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("scale", "detection", "fast", "knee", "control")
# Parts a full run leaves out (asked for by name: `make bench-loss`).
SEPARATE_PARTS = ("loss",)


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--sizes", type=_sizes, default=(100, 500, 2000))
    p.add_argument("--modes", default="fresh,keepalive")
    p.add_argument("--baseline-sizes", type=_sizes, default=(100,))
    p.add_argument(
        "--haproxy-sizes",
        type=_sizes,
        default=(100, 500, 2000),
        help="sizes at which HAProxy's checks run, each just before the agent at that size",
    )
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--baseline-warmup", type=float, default=15.0)
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS + SEPARATE_PARTS)} (all but "
        f"{','.join(SEPARATE_PARTS)} by default)",
    )
    p.add_argument(
        "--skip-detection", action="store_true", help="same as leaving it out of --parts"
    )
    p.add_argument("--trials", type=int, default=20, help="detection trials per engine")
    p.add_argument("--detection-n", type=int, help="detection bench targets (max of --sizes)")
    p.add_argument("--fault", choices=sorted(FAULTS), default="refuse")
    p.add_argument("--exabgp", help="ExaBGP for the detection bench (beside --python)")
    p.add_argument("--fast-n", type=int, default=200, help="fast-mode detection targets")
    p.add_argument("--fast-trials", type=int, help="fast-mode trials per case (--trials)")
    p.add_argument("--fast-faults", default="refuse,drop", help="faults at 100 ms")
    p.add_argument(
        "--fast-slow-faults", default="refuse", help="faults at 1 s, beside them (may be empty)"
    )
    p.add_argument("--knee-modes", default="keepalive,fresh")
    p.add_argument("--knee-start", type=int, default=2000, help="the knee search's first N")
    p.add_argument("--knee-ceiling", type=int, default=8000, help="the knee search's largest N")
    p.add_argument("--knee-max-runs", type=int, default=7, help="knee steps per mode at most")
    p.add_argument("--knee-window", type=float, default=10.0, help="each knee step's window")
    p.add_argument("--control-n", type=int, help="control-plane bench targets (max of --sizes)")
    p.add_argument(
        "--control-base",
        action="append",
        default=[],
        metavar="[LABEL=]DIR",
        help="also measure the control plane of the agent code in DIR (e.g. an older commit's "
        "tree), alternating with this tree's in the same run; repeatable",
    )
    p.add_argument("--control-rounds", type=int, default=1, help="control-plane runs per tree")
    p.add_argument(
        "--loss-rates", default="1,5", help="loss part: packet loss rates, %% of each way"
    )
    p.add_argument("--loss-window", type=float, default=300.0, help="loss part: s per rate")
    p.add_argument("--smoke", action="store_true", help="N=20 for a few seconds (CI)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    p.add_argument("--python", default=sys.executable, help="interpreter with the agent")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: print the tables of an earlier run's results file and write "
        "them to --docs as that run would have",
    )
    args = p.parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        write_docs(args.docs, result, markdown(result), args.render, smoke=False)
        return 0
    args.parts = {part for part in args.parts.split(",") if part}
    if unknown := args.parts - set(PARTS + SEPARATE_PARTS):
        p.error(f"unknown --parts {sorted(unknown)}; "
                f"choose from {','.join(PARTS + SEPARATE_PARTS)}")  # fmt: skip
    try:
        args.loss_rates = tuple(float(r) for r in args.loss_rates.split(",") if r)
    except ValueError:
        p.error(f"--loss-rates: expected percentages like 1,5, got {args.loss_rates!r}")
    if not args.loss_rates or not all(0 < r < 100 for r in args.loss_rates):
        p.error(f"--loss-rates: each rate must be in (0, 100), got {args.loss_rates!r}")
    for option in ("fast_faults", "fast_slow_faults"):
        if unknown := {f for f in getattr(args, option).split(",") if f} - set(FAULTS):
            p.error(f"unknown --{option.replace('_', '-')} {sorted(unknown)}; choose from "
                    f"{','.join(sorted(FAULTS))}")  # fmt: skip
    if args.skip_detection:
        args.parts.discard("detection")
    if os.geteuid() != 0:
        print("the bench needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.smoke:
        args.sizes, args.baseline_sizes, args.haproxy_sizes = (20,), (20,), (20,)
        args.warmup, args.window, args.baseline_warmup = 1.0, 3.0, 2.0
        args.trials, args.detection_n = 2, 20
        # The 1 s timing is the detection part's already: the fast part's own cases only.
        args.fast_n, args.fast_trials, args.fast_slow_faults = 20, 2, ""
        args.knee_modes, args.knee_start, args.knee_ceiling = "fresh", 20, 30
        args.knee_max_runs, args.knee_window = 2, 3.0
        args.loss_rates, args.loss_window = (5.0,), 5.0
    plan = ScalePlan(
        sizes=args.sizes,
        modes=tuple(m for m in args.modes.split(",") if m),
        baseline_sizes=args.baseline_sizes,
        warmup_s=args.warmup,
        window_s=args.window,
        baseline_warmup_s=args.baseline_warmup,
        python=args.python,
        haproxy_sizes=args.haproxy_sizes,
    )
    now = datetime.datetime.now(datetime.UTC)
    work = Path(tempfile.mkdtemp(prefix="aab-bench-"))
    try:
        result = run_all(args, plan, work, now)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(result)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{now:%Y-%m-%dT%H%M%SZ}{'-smoke' if args.smoke else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_docs(args.docs, result, table, out, smoke=args.smoke)
    return 0


def write_docs(
    docs: Path, result: dict[str, Any], table: str, results: Path, *, smoke: bool
) -> None:
    """Print the tables and the command; write them to `docs` (not for a smoke run)."""
    print(table)
    print(f"\ncommand: {result['command']} (ran {result['runtime_s']:g} s)")
    print(f"results: {results}")
    rel = results.resolve()
    rel = rel.relative_to(ROOT) if rel.is_relative_to(ROOT) else rel
    old = docs.read_text() if docs.exists() else ""
    parts = result["plan"]["parts"]
    if smoke:
        print("docs/performance.md not updated (smoke run)")
    elif set(parts) != set(PARTS):
        # A partial run writes its own dated section (replacing one of the same parts).
        section = dated_section(result, table, str(rel))
        docs.write_text(with_dated_section(old, parts, section))
        print(f"updated the section for parts {','.join(parts)} of {docs}")
    else:
        # A full run rewrites the document and keeps the partial runs' dated sections.
        docs.write_text(performance_doc(result, table, str(rel)) + kept_dated_sections(old))
        print(f"updated: {docs}")


def run_all(
    args: argparse.Namespace, plan: ScalePlan, work: Path, now: datetime.datetime
) -> dict[str, Any]:
    started, load_before = time.monotonic(), loadavg()
    rows: list[dict[str, Any]] = []
    if "scale" in args.parts:
        print(f"probe scale: sizes {plan.sizes}, modes {plan.modes}, "
              f"baseline {plan.baseline_sizes}, haproxy {plan.haproxy_sizes}")  # fmt: skip
        rows = run_probe_scale(work, plan)
    ratio_n = plan.baseline_sizes[0] if plan.baseline_sizes else 0
    ratios = ratio(rows, ratio_n)
    big = max(plan.sizes)
    detection: dict[str, Any] = {"skipped": "not requested (--parts)"}
    if "detection" in args.parts:
        dplan = DetectionPlan(
            n=args.detection_n or big,
            trials=args.trials,
            python=args.python,
            exabgp=args.exabgp or exabgp_beside(args.python),
            fault=args.fault,
        )
        print(f"detection: N={dplan.n}, {dplan.trials} trials per engine, fault {dplan.fault}")
        detection = run_detection(work, dplan)
    fast: dict[str, Any] = {"skipped": "not requested (--parts)"}
    if "fast" in args.parts:
        fplan = FastPlan(
            n=args.fast_n,
            trials=args.fast_trials or args.trials,
            python=args.python,
            exabgp=args.exabgp or exabgp_beside(args.python),
            faults=tuple(f for f in args.fast_faults.split(",") if f),
            slow_faults=tuple(f for f in args.fast_slow_faults.split(",") if f),
        )
        print(f"fast-mode detection: N={fplan.n}, {fplan.trials} trials per case, "
              f"faults {fplan.faults} at 100 ms, {fplan.slow_faults} at 1 s")  # fmt: skip
        fast = run_fast_detection(work, fplan)
    knee: dict[str, Any] = {"skipped": "not requested (--parts)"}
    if "knee" in args.parts:
        kplan = KneePlan(
            python=args.python,
            modes=tuple(m for m in args.knee_modes.split(",") if m),
            start=args.knee_start,
            ceiling=args.knee_ceiling,
            max_runs=args.knee_max_runs,
            warmup_s=plan.warmup_s,
            window_s=args.knee_window,
        )
        print(f"knee: modes {kplan.modes}, N from {kplan.start} up to {kplan.ceiling}, "
              f"at most {kplan.max_runs} steps per mode")  # fmt: skip
        knee = run_knee(work, kplan)
    control: dict[str, Any] = {"skipped": "not requested (--parts)"}
    if "control" in args.parts:
        trees = [*parse_trees(args.control_base), this_tree()]
        cplan = SMOKE if args.smoke else ControlPlan(rounds=args.control_rounds)
        control = run_control_plane(
            work, args.control_n or big, args.python, plan.warmup_s, trees, cplan
        )
    loss: dict[str, Any] = {"skipped": "not requested (--parts)"}
    if "loss" in args.parts:
        lplan = LossPlan(
            python=args.python,
            exabgp=args.exabgp or exabgp_beside(args.python),
            rates_pct=args.loss_rates,
            window_s=args.loss_window,
        )
        print(f"loss: rates {lplan.rates_pct} %, {lplan.window_s:g} s each, "
              f"{len(lplan.services)} services")  # fmt: skip
        loss = run_loss(work, lplan)
    haproxy = haproxy_ratios(rows)
    return {
        "date": now.isoformat(timespec="seconds"),
        "runtime_s": round(time.monotonic() - started),
        "loadavg": {"before": load_before, "after": loadavg()},
        "namespaces": list(sandbox.CREATED),
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "machine": machine(),
        "versions": versions(args.python),
        "plan": {
            "parts": sorted(args.parts),
            "sizes": list(plan.sizes),
            "modes": list(plan.modes),
            "baseline_sizes": list(plan.baseline_sizes),
            "haproxy_sizes": list(plan.haproxy_sizes),
            "warmup_s": plan.warmup_s,
            "window_s": plan.window_s,
        },
        "probe_scale": rows,
        "ratios": ratios,
        "haproxy_ratios": haproxy,
        "targets": targets(
            rows, (ratios.get("fresh") and ratios) or {}, big, detection, haproxy, fast
        ),
        "detection": detection,
        "fast_detection": fast,
        "knee": knee,
        "control_plane": control,
        "loss": loss,
    }


if __name__ == "__main__":
    sys.exit(main())
