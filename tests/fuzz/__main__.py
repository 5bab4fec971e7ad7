"""`make fuzz`: every surface at a budget of inputs, seeded; prints count, time and seed.

python -m tests.fuzz [--budget 100000] [--seed N] [--surface NAME ...]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time

from hypothesis import HealthCheck, given, seed, settings

from tests.fuzz.surfaces import Surface, surfaces


def run(surface: Surface, budget: int, seed_value: int) -> tuple[int, float]:
    """Run `surface` on `budget` generated inputs; (how many ran, seconds). Raises on a finding
    (hypothesis shrinks it first and prints the input)."""
    count = 0

    @seed(seed_value)
    @settings(
        max_examples=budget,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(surface.strategy)
    def target(case: object) -> None:
        nonlocal count
        count += 1
        surface.check(case)

    started = time.monotonic()
    target()
    return count, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--budget", type=int, default=100_000, help="inputs per surface")
    p.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    p.add_argument("--surface", action="append", help="only these (default: all)")
    args = p.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the agent's own log lines about hostile input
    seed_value = args.seed if args.seed is not None else random.randrange(2**32)
    command = f"python -m tests.fuzz --budget {args.budget} --seed {seed_value}"
    print(f"fuzz: {command}", flush=True)
    with surfaces() as all_surfaces:
        for surface in all_surfaces:
            if args.surface and surface.name not in args.surface:
                continue
            count, took = run(surface, args.budget, seed_value)
            print(
                f"fuzz: {surface.name:<8} {count:>7} inputs in {took:7.1f}s "
                f"({count / took:,.0f}/s), seed {seed_value}: no finding",
                flush=True,
            )
            if surface.report():
                print(f"fuzz: {surface.name:<8} {surface.report()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
