"""The garbage collector's view of a long-lived agent: what starts and reloads leave behind."""

from __future__ import annotations

import gc

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
