"""Control-plane bench: /v1/status and /metrics latency while the agent probes N targets.

Skips with a note until the agent serves `control.listen`; once it does, this measures it
unchanged (the agent is started with `control.listen` set and polled at a fixed rate).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path

from bench.nginx import Nginx
from bench.sandbox import Sandbox
from bench.stats import ms, percentile
from bench.targets import agent_config, write_config

LISTEN_PORT = 9179
REQUESTS_PER_PATH = 50
REQUEST_GAP_S = 0.05
REQUEST_TIMEOUT_S = 10.0  # a scrape of 2000 targets renders ~20,000 series
PATHS = ("/v1/status", "/metrics")


def control_available() -> str:
    """ "" when the agent has a control endpoint to measure, else why not."""
    if importlib.util.find_spec("anycast_agent.control.server") is None:
        return "the agent has no control endpoint yet (anycast_agent.control.server missing)"
    return ""


def run_control_plane(work: Path, n: int, python: str, warmup_s: float) -> dict[str, object]:
    if note := control_available():
        return {"skipped": note}
    state = work / "state-control"
    state.mkdir(parents=True, exist_ok=True)
    listen = f"127.0.0.1:{LISTEN_PORT}"
    config = write_config(
        work / "agent-control.yaml", agent_config(n, state, control_listen=listen)
    )
    result: dict[str, object] = {"n": n}
    with Sandbox("ctl") as box:
        nginx = Nginx(box, work / "nginx-control")
        nginx.start()
        # The agent must outlive the polls (each poll is bounded by REQUEST_TIMEOUT_S); it is
        # stopped right after them.
        window_s = len(PATHS) * REQUESTS_PER_PATH * (REQUEST_GAP_S + REQUEST_TIMEOUT_S) + 10
        proc = box.spawn(
            [
                python,
                "-m",
                "bench.agent_proc",
                "--config",
                str(config),
                "--warmup",
                f"{warmup_s:g}",
                "--window",
                f"{window_s:g}",
                "--out",
                str(work / "agent-control.json"),
            ],
            stderr=work / "agent-control.log",
        )
        try:
            time.sleep(warmup_s)
            if not _serving(box):
                return {"skipped": f"the agent does not serve control.listen {listen} yet"}
            for path in PATHS:
                lat = _poll(box, path)
                result[path] = {
                    "requests": len(lat),
                    "p50_ms": ms(percentile(lat, 50)),
                    "p99_ms": ms(percentile(lat, 99)),
                }
        finally:
            box.stop(proc)
    return result


def _serving(box: Sandbox) -> bool:
    """Whether something accepts connections on the control port inside the namespace."""
    script = (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1',{LISTEN_PORT})))"
    )
    return (
        subprocess.run(box.argv(["python3", "-c", script]), timeout=10, check=False).returncode == 0
    )


def _poll(box: Sandbox, path: str) -> list[float]:
    """Latencies of REQUESTS_PER_PATH GETs, timed by a client inside the namespace."""
    script = (
        "import json,socket,sys,time\n"
        f"lat=[]\nfor _ in range({REQUESTS_PER_PATH}):\n"
        "    t=time.monotonic()\n"
        f"    s=socket.create_connection(('127.0.0.1',{LISTEN_PORT}),{REQUEST_TIMEOUT_S})\n"
        f"    s.sendall(b'GET {path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "    while s.recv(65536): pass\n"
        "    s.close(); lat.append(time.monotonic()-t)\n"
        f"    time.sleep({REQUEST_GAP_S})\n"
        "print(json.dumps(lat))\n"
    )
    out = subprocess.run(
        box.argv(["python3", "-c", script]),
        capture_output=True,
        text=True,
        timeout=REQUESTS_PER_PATH * (REQUEST_TIMEOUT_S + REQUEST_GAP_S) + 10,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"GET {path} failed: {out.stderr.strip().splitlines()[-1:]}")
    values: list[float] = json.loads(out.stdout)
    return values
