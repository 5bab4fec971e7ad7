"""The HAProxy baseline's configuration: one checked server per target, and HAProxy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.haproxy import HAPROXY, available, haproxy_conf
from bench.targets import HTTP_PORT, Timing, target_address


def test_one_checked_server_per_target_on_one_thread(tmp_path: Path) -> None:
    conf = haproxy_conf(3, tmp_path, Timing())
    servers = [line.split() for line in conf.splitlines() if line.strip().startswith("server ")]
    assert [s[2] for s in servers] == [f"ipv6@{target_address(i)}:{HTTP_PORT}" for i in range(3)]
    assert "nbthread 1" in conf
    assert "default-server check inter 1000ms fall 3 rise 2" in conf
    assert "timeout check 800ms" in conf


@pytest.mark.skipif(not available(), reason="haproxy is not installed")
def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "haproxy.cfg").write_text(haproxy_conf(2000, tmp_path, Timing()))
    proc = subprocess.run(
        [HAPROXY, "-c", "-f", str(tmp_path / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
