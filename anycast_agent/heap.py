"""The interpreter's settings for a long-lived agent: what the garbage collector walks (what
starts and reloads leave behind), and how long a thread holds the GIL."""

from __future__ import annotations

import gc
import sys

# Container allocations between two young collections (CPython's default is 700). A snapshot of
# 2,000 targets allocates a few thousand: at 700 each one built on the loop ran three or four
# young collections over its own rows, and every tenth of those a middle one (3-6 ms in all).
# At 10,000 most of what a decision step, a snapshot or a request makes is freed by reference
# counting before any collection walks it.
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Collect garbage once, then hide every object alive now (config, probes, modules) from
    the cyclic collector (`gc.freeze`). Without it a full collection walks all of them: at
    2,000 targets that stalled the probe loop for 50-120 ms every few seconds (measured with
    gc.callbacks in the bench), the tail of the probe-start jitter. Run once the probes have
    started (their closures and connections are most of what lives on) and after each reload
    (unfreezing first, so what the reload dropped can be collected). Sets the young
    generation's threshold too (`YOUNG_THRESHOLD`)."""
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    gc.unfreeze()
    gc.collect()
    gc.freeze()


# How long a thread keeps the GIL once another asks for it (CPython's default is 5 ms). The
# control endpoint renders in a worker thread (`control/rendering.py`); each time the loop let
# go of the GIL for a system call (thousands a second while probing) the rendering took it, and
# the loop waited the whole interval to get it back: 10-15 ms of a probe batch's wall time per
# /metrics rendering at 2,000 targets (measured with thread_time against wall time per loop
# callback in the bench's agent). With nothing to hand over, the interval costs nothing.
SWITCH_INTERVAL_S = 0.0005


def share_the_gil() -> None:
    """Make a busy worker thread hand the GIL back to the event loop within `SWITCH_INTERVAL_S`."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
