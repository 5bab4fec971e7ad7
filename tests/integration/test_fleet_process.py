"""The `run` process with `fleet:` and etcd unreachable: the agent's copy of ctl/ keeps the
fleet's drains across a restart, and nothing is withdrawn without the guard."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

from tests.integration.test_process import FakeExabgp, agent_config, fake, write

__all__ = ["fake"]  # the fixture, used by name


def dead_endpoint() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def fleet_config(tmp_path: Path) -> dict[str, object]:
    data = agent_config(tmp_path)
    web = data["services"][0]  # type: ignore[index]
    api = {**web, "name": "api", "prefixes": ["192.0.2.20/32"]}
    data["services"] = [web, api]
    data["fleet"] = {"endpoints": [dead_endpoint()], "timeout": "200ms", "lease_ttl": "2s"}
    return data


def write_ctl_copy(tmp_path: Path, ctl: dict[str, bytes]) -> None:
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    copy = {
        "format": 1,
        "revision": 9,
        "ctl": {k: base64.b64encode(v).decode() for k, v in ctl.items()},
    }
    (state / "fleet-ctl.json").write_text(json.dumps(copy))


def test_a_restart_without_etcd_keeps_the_fleet_drain_from_the_agents_copy(
    tmp_path: Path, fake: list[FakeExabgp]
) -> None:
    drain = {"action": "drain", "reason": "DR test", "author": "op"}
    write_ctl_copy(tmp_path, {"intent/service/web": json.dumps(drain).encode()})
    f = FakeExabgp(write(tmp_path, fleet_config(tmp_path)))
    fake.append(f)
    f.serve_until("announce route 192.0.2.20/32")  # api: decided, announced
    assert not [line for line in f.lines if "192.0.2.10/32" in line]  # web: drained by the fleet


def test_without_the_copy_both_are_announced(tmp_path: Path, fake: list[FakeExabgp]) -> None:
    f = FakeExabgp(write(tmp_path, fleet_config(tmp_path)))
    fake.append(f)
    f.serve_until("announce route 192.0.2.20/32")
    if not [line for line in f.lines if "announce route 192.0.2.10/32" in line]:
        f.serve_until("announce route 192.0.2.10/32")


def test_an_unreadable_copy_is_said_and_the_agent_runs(
    tmp_path: Path, fake: list[FakeExabgp]
) -> None:
    state = tmp_path / "state"
    state.mkdir(parents=True)
    (state / "fleet-ctl.json").write_text('{"format": 1, "revision": "nine", "ctl": {}}')
    f = FakeExabgp(write(tmp_path, fleet_config(tmp_path)))
    fake.append(f)
    f.serve_until("announce route 192.0.2.20/32")
    f.proc.kill()
    f.proc.wait(5)
    assert "fleet-ctl.json is unreadable: revision must be an integer" in f.stderr()
