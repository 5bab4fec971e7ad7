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
from pathlib import Path
from typing import Any

from bench.control_plane import SMOKE, ControlPlan, parse_trees, run_control_plane, this_tree
from bench.detection import FAULTS, DetectionPlan, exabgp_beside, run_detection
from bench.probe_scale import ScalePlan, run_probe_scale
from bench.procstat import machine
from bench.report import (
    control_doc_section,
    kept_section,
    markdown,
    performance_doc,
    ratio,
    targets,
    versions,
    with_section,
)

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("scale", "detection", "control")


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--sizes", type=_sizes, default=(100, 500, 2000))
    p.add_argument("--modes", default="fresh,keepalive")
    p.add_argument("--baseline-sizes", type=_sizes, default=(100,))
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--baseline-warmup", type=float, default=15.0)
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    p.add_argument(
        "--skip-detection", action="store_true", help="same as leaving it out of --parts"
    )
    p.add_argument("--trials", type=int, default=20, help="detection trials per engine")
    p.add_argument("--detection-n", type=int, help="detection bench targets (max of --sizes)")
    p.add_argument("--fault", choices=sorted(FAULTS), default="refuse")
    p.add_argument("--exabgp", help="ExaBGP for the detection bench (beside --python)")
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
    p.add_argument("--smoke", action="store_true", help="N=20 for a few seconds (CI)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    p.add_argument("--python", default=sys.executable, help="interpreter with the agent")
    args = p.parse_args(argv)
    args.parts = {part for part in args.parts.split(",") if part}
    if unknown := args.parts - set(PARTS):
        p.error(f"unknown --parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    if args.skip_detection:
        args.parts.discard("detection")
    if os.geteuid() != 0:
        print("the bench needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.smoke:
        args.sizes, args.baseline_sizes = (20,), (20,)
        args.warmup, args.window, args.baseline_warmup = 1.0, 3.0, 2.0
        args.trials, args.detection_n = 2, 20
    plan = ScalePlan(
        sizes=args.sizes,
        modes=tuple(m for m in args.modes.split(",") if m),
        baseline_sizes=args.baseline_sizes,
        warmup_s=args.warmup,
        window_s=args.window,
        baseline_warmup_s=args.baseline_warmup,
        python=args.python,
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
    print(table)
    print(f"\nresults: {out}")
    rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    old = args.docs.read_text() if args.docs.exists() else ""
    if args.smoke or args.parts not in ({"control"}, set(PARTS)):
        print("docs/performance.md not updated (smoke or partial run)")
    elif args.parts == {"control"}:
        # A control-plane run alone updates its own dated section, and nothing else.
        args.docs.write_text(with_section(old, control_doc_section(result, table, str(rel))))
        print(f"updated the control-plane section of {args.docs}")
    else:
        # A full run rewrites the document; a section from a control-plane run alone stays
        # (dated, with its own command) until the next one replaces it.
        args.docs.write_text(performance_doc(result, table, str(rel)) + kept_section(old))
        print(f"updated: {args.docs}")
    return 0


def run_all(
    args: argparse.Namespace, plan: ScalePlan, work: Path, now: datetime.datetime
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    if "scale" in args.parts:
        print(f"probe scale: sizes {plan.sizes}, modes {plan.modes}, "
              f"baseline {plan.baseline_sizes}")  # fmt: skip
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
    control: dict[str, Any] = {"skipped": "not requested (--parts)"}
    if "control" in args.parts:
        trees = [*parse_trees(args.control_base), this_tree()]
        cplan = SMOKE if args.smoke else ControlPlan(rounds=args.control_rounds)
        control = run_control_plane(
            work, args.control_n or big, args.python, plan.warmup_s, trees, cplan
        )
    return {
        "date": now.isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "machine": machine(),
        "versions": versions(args.python),
        "plan": {
            "parts": sorted(args.parts),
            "sizes": list(plan.sizes),
            "modes": list(plan.modes),
            "baseline_sizes": list(plan.baseline_sizes),
            "warmup_s": plan.warmup_s,
            "window_s": plan.window_s,
        },
        "probe_scale": rows,
        "ratios": ratios,
        "targets": targets(rows, (ratios.get("fresh") and ratios) or {}, big, detection),
        "detection": detection,
        "control_plane": control,
    }


if __name__ == "__main__":
    sys.exit(main())
