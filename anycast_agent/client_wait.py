"""`drain --wait`: follow the agent's status until the drained routes are withdrawn."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

POLL_S = 0.5


def held(status: Any, service: str | None) -> int | None:
    """How many routes of `service` (None: every service) ExaBGP still holds; None when
    `status` is not a status document (it then proves nothing)."""
    services = status.get("services") if isinstance(status, dict) else None
    if not isinstance(services, list):
        return None
    return sum(
        r.get("accepted") is not None
        for s in services
        if service is None or s.get("name") == service
        for r in s.get("routes", [])
    )


def wait_withdrawn(
    status: Callable[[], Any], service: str | None, out: TextIO, max_s: float
) -> bool:
    """Poll `status` until nothing of the drain's scope is held; False on `max_s`. `status`
    returns the agent's status, None when the agent is gone (done: nothing is left to
    withdraw by it), or anything else when this attempt told nothing."""
    deadline, last = time.monotonic() + max_s, -1
    while True:
        body = status()
        if body is None:
            out.write("the agent is gone: done\n")
            return True
        left = held(body, service)
        if left is None:
            left = last  # unknown: no answer, or not a status document; asked again
        elif left == 0:
            out.write("withdrawn: ExaBGP holds none of the drained routes\n")
            return True
        if left != last:
            out.write(f"waiting: ExaBGP still holds {left} route(s), de-preferred\n")
            last = left
        if time.monotonic() >= deadline:
            still = f"{left} route(s)" if left >= 0 else "routes (unknown: no status)"
            out.write(f"gave up waiting after {max_s:g}s: {still} still held\n")
            return False
        time.sleep(POLL_S)
