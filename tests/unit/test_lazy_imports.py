"""What a running agent does not import: code for features its config does not use stays on disk
(dnspython without DNS targets, the etcd client without `fleet:`), so it costs no memory.
Checked in a fresh interpreter that runs the agent for a moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, json, sys
import anycast_agent.cli  # what `anycast-agent run` has loaded before its agent starts
from anycast_agent.agent import Agent
from anycast_agent.speaker.dry_run import DryRunSpeaker
from tests.unit.builders import make_config

config = make_config(
    state_dir=sys.argv[1],
    services=[
        {
            "name": "web",
            "prefixes": ["192.0.2.10/32"],
            "targets": [
                {"name": "edge1", "http": {"url": "http://127.0.0.1:9/health"}},
                {"name": "edge2", "tcp": {"host": "127.0.0.1", "port": 9}},
            ],
        }
    ],
)

async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    await Agent(config, DryRunSpeaker(lambda line: None), dry_run=True).run(stop)

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""


def modules_of_a_run(tmp_path: Path) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_a_run_without_fleet_or_dns_targets_imports_neither(tmp_path: Path) -> None:
    modules = modules_of_a_run(tmp_path)
    assert "anycast_agent.probes.http_lean" in modules  # the run did start its probes
    assert not {m for m in modules if m == "dns" or m.startswith("dns.")}
    assert "anycast_agent.probes.dns" not in modules
    assert not {m for m in modules if m.startswith("anycast_agent.fleet.etcd")}
    assert "anycast_agent.fleet.coordinator" not in modules
    assert "anycast_agent.fleet.operator_cli" not in modules  # `anycast-agent fleet` only
    assert "anycast_agent.supervise" not in modules  # `anycast-agent supervise` only
