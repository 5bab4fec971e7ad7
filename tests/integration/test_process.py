"""The `run` process as ExaBGP sees it: stdout carries only commands; start, exit and bad config."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

STOP_GRACE_S = 5.0


def agent_config(tmp_path: Path, **service: object) -> dict[str, object]:
    return {
        "pop": "t1",
        "state_dir": str(tmp_path / "state"),
        "bgp": {
            "local_as": 65001,
            "router_id": "198.51.100.2",
            "neighbors": [
                {"address": "198.51.100.1", "local_address": "198.51.100.2", "peer_as": 65000}
            ],
        },
        "defaults": {
            "interval": "100ms",
            "timeout": "80ms",
            "rise": 1,
            "fall": 1,
            "drain_grace": "200ms",  # a prefix the config drops is de-preferred this long
        },
        "services": [
            {
                "name": "web",
                "prefixes": ["192.0.2.10/32"],
                "targets": [{"name": "ok", "exec": {"argv": ["/bin/true"]}}],
                "ramp": {"stages": [100]},
                **service,
            }
        ],
    }


def write(tmp_path: Path, data: object, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    e.pop("ANYCAST_AGENT_STATE_DIR", None)
    return e


class FakeExabgp:
    """Plays ExaBGP's side of the pipes: acks every line, answers `show` with given output."""

    def __init__(self, config: Path, *, ack: bool = True, held: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anycast_agent", "run", "--config", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env(),
        )
        self.ack = ack
        self.held = held or []
        self.lines: list[str] = []
        self._buf = b""

    def read_line(self, timeout_s: float) -> str | None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        text = line.decode()
        self.lines.append(text)
        return text

    def answer(self, line: str) -> None:
        assert self.proc.stdin is not None
        out = ""
        if line == "show adj-rib out extensive":
            out = "".join(f"{h}\n" for h in self.held)
        if self.ack:
            out += "done\n"
        self.proc.stdin.write(out.encode())
        self.proc.stdin.flush()

    def serve_until(self, predicate: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.read_line(deadline - time.monotonic())
            if line is None:
                break
            self.answer(line)
            if predicate in line:
                return
        pytest.fail(f"the agent never wrote {predicate!r}; it wrote {self.lines}\n{self.stderr()}")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    def wait_exit(self, timeout_s: float) -> float:
        start = time.monotonic()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the agent did not exit within {timeout_s}s")
        return time.monotonic() - start

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_GRACE_S)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[list[FakeExabgp]]:
    made: list[FakeExabgp] = []
    yield made
    for f in made:
        f.close()


def test_announces_then_exits_on_stdin_eof_within_1s(
    tmp_path: Path, fake: list[FakeExabgp]
) -> None:
    f = FakeExabgp(write(tmp_path, agent_config(tmp_path)))
    fake.append(f)
    f.serve_until("announce route 192.0.2.10/32")
    assert f.lines == [
        "show neighbor summary",
        "show adj-rib out extensive",
        "neighbor 198.51.100.1 announce route 192.0.2.10/32 next-hop self med 100",
    ]
    assert f.proc.stdin is not None
    f.proc.stdin.close()
    elapsed = f.wait_exit(3.0)
    print(f"exit after stdin EOF: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0
    assert f.proc.returncode == 0
    assert f.read_line(0.5) is None  # no withdraw on exit
    assert "stdin closed by ExaBGP" in f.stderr()


def test_sigterm_exits_within_1_5s_without_withdrawing(
    tmp_path: Path, fake: list[FakeExabgp]
) -> None:
    f = FakeExabgp(write(tmp_path, agent_config(tmp_path)))
    fake.append(f)
    f.serve_until("announce route")
    f.proc.send_signal(signal.SIGTERM)
    elapsed = f.wait_exit(3.0)
    print(f"exit after SIGTERM: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.5 and f.proc.returncode == 0
    assert f.read_line(0.2) is None


def test_shutdown_notification_exits(tmp_path: Path, fake: list[FakeExabgp]) -> None:
    f = FakeExabgp(write(tmp_path, agent_config(tmp_path)))
    fake.append(f)
    f.serve_until("announce route")
    assert f.proc.stdin is not None
    f.proc.stdin.write(
        b'{ "exabgp": "5.0.0", "type": "notification", "notification": "shutdown" }\n'
    )
    f.proc.stdin.flush()
    assert f.wait_exit(3.0) < 1.0


def test_held_route_of_removed_prefix_is_drained_out_and_healthy_one_not_resent(
    tmp_path: Path, fake: list[FakeExabgp]
) -> None:
    head = (
        "neighbor 198.51.100.1 local-ip 198.51.100.2 local-as 65001 peer-as 65000 "
        "router-id 198.51.100.2 family-allowed in-open ipv4 unicast"
    )
    held = [
        f"{head} 192.0.2.10/32 next-hop 198.51.100.2 med 100",
        f"{head} 192.0.2.99/32 next-hop 198.51.100.2 med 100",
    ]
    cfg = agent_config(tmp_path)
    f = FakeExabgp(write(tmp_path, cfg), held=held)
    fake.append(f)
    # DESIGN §3.6: de-preferred first (GSHUT, max MED), withdrawn after drain_grace.
    f.serve_until("announce route 192.0.2.99/32 next-hop self med 4294967294")
    f.serve_until("withdraw route 192.0.2.99/32")
    # The configured, healthy prefix is held as wanted: nothing is sent for it.
    assert f.read_line(1.0) is None
    assert not any("192.0.2.10/32" in line for line in f.lines)


def test_no_acks_exits_3_before_any_route(tmp_path: Path, fake: list[FakeExabgp]) -> None:
    f = FakeExabgp(write(tmp_path, agent_config(tmp_path)), ack=False)
    fake.append(f)
    assert f.read_line(5.0) == "show neighbor summary"
    f.answer("show neighbor summary")
    f.wait_exit(10.0)
    assert f.proc.returncode == 3
    assert f.read_line(0.2) is None
    assert "exabgp.api.ack=true" in f.stderr()


@pytest.mark.parametrize(
    ("mutation", "named"),
    [
        ({"prefixes": ["192.0.2.300/32"]}, "services[web].prefixes[0]"),
        (
            {
                "targets": [
                    {"name": "ok", "exec": {"argv": ["/bin/true"]}},
                    {"name": "ok", "exec": {"argv": ["/bin/true"]}},
                ]
            },
            "duplicate target name 'ok'",
        ),
        (
            {"targets": [{"name": "ok", "timeout": "1s", "exec": {"argv": ["/bin/true"]}}]},
            "timeout",
        ),
    ],
)
def test_invalid_config_exits_2_before_sending(
    tmp_path: Path, mutation: dict[str, object], named: str
) -> None:
    path = write(tmp_path, agent_config(tmp_path, **mutation))
    check = subprocess.run(
        [sys.executable, "-m", "anycast_agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env(),
        check=False,
    )
    assert check.returncode == 2 and named in check.stderr
    run = subprocess.run(
        [sys.executable, "-m", "anycast_agent", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env(),
        check=False,
        timeout=20,
        input="",
    )
    assert run.returncode == 2
    assert run.stdout == ""  # not even a `show`
    assert named in run.stderr and "no last-good config" in run.stderr


def test_invalid_config_falls_back_to_last_good(tmp_path: Path, fake: list[FakeExabgp]) -> None:
    good = write(tmp_path, agent_config(tmp_path))
    f = FakeExabgp(good)
    fake.append(f)
    f.serve_until("announce route")
    f.close()
    assert (tmp_path / "state" / "last-good-config.yaml").exists()
    broken = write(tmp_path, agent_config(tmp_path, prefixes=["not-a-prefix"]))
    f2 = FakeExabgp(broken)
    fake.append(f2)
    f2.serve_until("announce route 192.0.2.10/32")
    f2.proc.terminate()
    f2.wait_exit(3.0)
    err = f2.stderr()
    assert "not-a-prefix" in err and "running the last-good config" in err


def test_sighup_reload_applies_a_valid_config_and_refuses_a_broken_one(
    tmp_path: Path, fake: list[FakeExabgp]
) -> None:
    cfg = agent_config(tmp_path)
    path = write(tmp_path, cfg)
    f = FakeExabgp(path)
    fake.append(f)
    f.serve_until("announce route 192.0.2.10/32")
    # A broken config: refused, nothing sent, the running config stays.
    path.write_text(yaml.safe_dump(agent_config(tmp_path, prefixes=["192.0.2.999/32"])))
    f.proc.send_signal(signal.SIGHUP)
    assert f.read_line(1.5) is None
    # A valid config adding a service: it is announced once its target is up.
    services = cfg["services"]
    assert isinstance(services, list)
    services.append(
        {
            "name": "api",
            "prefixes": ["192.0.2.20/32"],
            "targets": [{"name": "ok", "exec": {"argv": ["/bin/true"]}}],
            "ramp": {"stages": [100]},
        }
    )
    path.write_text(yaml.safe_dump(cfg))
    f.proc.send_signal(signal.SIGHUP)
    f.serve_until("announce route 192.0.2.20/32")
    # Removing it again drains it out (one of two routes: no confirmation needed); the other
    # service is left alone.
    services.pop()
    path.write_text(yaml.safe_dump(cfg))
    f.proc.send_signal(signal.SIGHUP)
    f.serve_until("announce route 192.0.2.20/32 next-hop self med 4294967294")
    f.serve_until("withdraw route 192.0.2.20/32")
    assert f.read_line(1.0) is None
    f.proc.terminate()
    f.wait_exit(3.0)
    err = f.stderr()
    assert "reload refused, keeping the running config" in err and "192.0.2.999/32" in err
    assert not any("192.0.2.10/32" in line for line in f.lines[3:])
