"""Detection bench (failure injected → withdraw in the upstream's RIB): not built yet.

Planned shape: a GoBGP upstream (`gobgpd` + `gobgp monitor global rib -j`) in one `aab-`
namespace, ExaBGP with the agent (and, separately, the healthcheck) in another, N - 1 healthy
background targets, one service whose only edge is stopped at a recorded time; ≥ 20 trials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_detection(work: Path, n: int, python: str) -> dict[str, Any]:
    del work, n, python
    return {"skipped": "the detection bench is not implemented yet (see bench/detection.py)"}
