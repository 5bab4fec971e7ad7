"""The upstream router of the detection bench: GoBGP, and a `gobgp monitor` stream stamped on read.

Every line `gobgp monitor global rib -j` prints is one change in GoBGP's RIB; the bench notes
the wall-clock time (`time.time()`, the clock the agent's log lines use) at which it reads the
line, so a withdraw is timed at the moment it is visible to a client of the upstream's RIB.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.sandbox import Sandbox

GOBGPD = "gobgpd"
GOBGP = "gobgp"
API_PORT = 50051
READY_TIMEOUT_S = 15.0

CONF = """\
[global.config]
  as = {local_as}
  router-id = "{address}"
  local-address-list = ["{address}"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{peer}"
    peer-as = {peer_as}
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.timers.config]
    hold-time = 9
"""


@dataclass(frozen=True, slots=True)
class RibEvent:
    at: float  # wall clock (epoch s) when the bench read the line
    prefix: str
    withdrawn: bool


class Gobgp:
    """gobgpd in `box`, passive towards one eBGP peer, with its RIB monitored from start."""

    def __init__(
        self, box: Sandbox, root: Path, *, address: str, local_as: int, peer: str, peer_as: int
    ) -> None:
        self.box = box
        self.root = root
        self.conf = CONF.format(address=address, local_as=local_as, peer=peer, peer_as=peer_as)
        self.events: list[RibEvent] = []
        self._cond = threading.Condition()
        self._monitor: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "gobgpd.toml"
        conf.write_text(self.conf)
        self.box.spawn(
            [GOBGPD, "-f", str(conf), "-t", "toml", "-p", "-l", "info",
             "--api-hosts", f"127.0.0.1:{API_PORT}", "--pprof-disable"],
            stdout=self.root / "gobgpd.log",
            stderr=self.root / "gobgpd.log",
        )  # fmt: skip
        self._wait_api()
        self._monitor = self.box.spawn(
            [GOBGP, "-u", "127.0.0.1", "-p", str(API_PORT), "monitor", "global", "rib", "-j"],
            stdout=subprocess.PIPE,
            stderr=self.root / "monitor.stderr",
        )
        self._reader = threading.Thread(target=self._read, name="gobgp-monitor", daemon=True)
        self._reader.start()

    def _wait_api(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        argv = self.box.argv([GOBGP, "-u", "127.0.0.1", "-p", str(API_PORT), "global"])
        while time.monotonic() < deadline:
            if subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"gobgpd's API did not answer within {READY_TIMEOUT_S:g} s")

    def _read(self) -> None:
        assert self._monitor is not None and self._monitor.stdout is not None
        for line in self._monitor.stdout:
            at = time.time()
            found = list(parse_monitor_line(line, at))
            if found:
                with self._cond:
                    self.events.extend(found)
                    self._cond.notify_all()

    def wait(self, prefix: str, *, withdrawn: bool, after: float, timeout_s: float) -> RibEvent:
        """The first change of `prefix` (withdraw or announce) read after wall time `after`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            start = 0
            while True:
                for event in self.events[start:]:
                    if event.prefix == prefix and event.withdrawn is withdrawn and event.at > after:
                        return event
                start = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    what = "withdraw" if withdrawn else "announce"
                    raise TimeoutError(f"no {what} of {prefix} upstream within {timeout_s:g} s")
                self._cond.wait(left)


def parse_monitor_line(line: bytes, at: float) -> list[RibEvent]:
    """RIB changes in one line of `gobgp monitor ... -j` (a path object or a list of them)."""
    try:
        data: Any = json.loads(line)
    except ValueError:
        return []
    paths = data if isinstance(data, list) else [data]
    events = []
    for path in paths:
        if not isinstance(path, dict):
            continue
        nlri = path.get("nlri")
        prefix = nlri.get("prefix") if isinstance(nlri, dict) else None
        if isinstance(prefix, str):
            events.append(RibEvent(at, prefix, bool(path.get("withdrawal", False))))
    return events
