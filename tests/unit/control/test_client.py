"""The command line client against a real control server (port 0 or a unix socket)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from anycast_agent.client import add_client_commands, format_status, run_client
from anycast_agent.client_wait import wait_withdrawn
from anycast_agent.control import status
from anycast_agent.control.rendering import Clocks
from anycast_agent.control.server import ControlServer
from anycast_agent.core.commands import Refusal, RefusalKind
from anycast_agent.core.intents import RampAction
from tests.unit.control.conftest import TOKEN, FakeController, make_snapshot, target


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anycast-agent")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = parse(argv)
    code = await asyncio.to_thread(run_client, args, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANYCAST_AGENT_URL", raising=False)
    monkeypatch.delenv("ANYCAST_AGENT_TOKEN_FILE", raising=False)


@pytest.fixture
async def agent(controller: FakeController) -> AsyncIterator[str]:
    server = ControlServer(controller, "127.0.0.1:0", TOKEN)
    await server.start()
    yield f"http://{server.describe()}"
    await server.stop()


async def test_status_table(agent: str) -> None:
    code, out, err = await run(["status", "--url", agent])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("pop ams1  agent 0.1.0  exabgp channel up  ready yes")
    assert "neighbors: 198.51.100.1 established, 198.51.100.3 down" in lines
    header = next(line for line in lines if line.startswith("SERVICE "))
    assert header.split() == ["SERVICE", "STATE", "STAGE", "MED", "HEALTHY", "DRAIN"]
    web = next(line for line in lines if line.startswith("web "))
    assert web.split()[:7] == ["web", "up", "100%", "150", "(override", "150)", "2/3"]
    dns = next(line for line in lines if line.startswith("dns "))
    assert "(suppressed)" in dns and "0% held" in dns and "PoP: maintenance (bob)" in dns
    assert any(line.split()[:4] == ["web/edge3", "http", "unhealthy", "-"] for line in lines)
    assert any(line.split()[:5] == ["web/edge1", "http", "healthy", "12ms", "ok"] for line in lines)


async def test_status_json(agent: str) -> None:
    code, out, _ = await run(["status", "--json", "--url", agent])
    assert code == 0
    assert json.loads(out)["services"][0]["name"] == "web"


async def test_status_of_one_service(agent: str) -> None:
    code, out, err = await run(["status", "--service", "dns", "--url", agent])
    assert (code, err) == (0, "")
    assert any(line.startswith("dns ") for line in out.splitlines())
    assert not any(line.startswith("web") for line in out.splitlines())
    code, out, _ = await run(["status", "--service", "dns", "--json", "--url", agent])
    assert [s["name"] for s in json.loads(out)["services"]] == ["dns"]
    code, _, err = await run(["status", "--service", "nope", "--url", agent])
    assert code == 1
    assert err.splitlines() == [
        "anycast-agent status: unknown service (HTTP 404)",
        '  {"service": "nope"}',
    ]


def test_status_table_escapes_control_characters() -> None:
    snap = make_snapshot()
    bad = replace(
        snap.services[0], targets=(target("edge1", last_ok=False, last_reason="\x1b[2Jboom\n"),)
    )
    doc = json.loads(status.render(replace(snap, services=(bad,))).fill(Clocks(0.0, 0.0)))
    text = format_status(doc)
    assert "\x1b" not in text and "?[2Jboom" in text


@pytest.mark.parametrize(
    ("argv", "call"),
    [
        (
            ["drain", "web", "--reason", "maintenance", "--expires", "30m"],
            (
                "drain",
                ("web",),
                {"reason": "maintenance", "author": "token", "expires_in_s": 1800.0},
            ),
        ),
        (
            ["drain", "--all", "--reason", "PoP work", "--author", "alice"],
            ("drain", (None,), {"reason": "PoP work", "author": "alice", "expires_in_s": None}),
        ),
        (
            ["drain", "--all", "--on-stop"],
            (
                "drain",
                (None,),
                {
                    "reason": "the unit is stopping",
                    "author": "token",
                    "expires_in_s": None,
                    "on_stop": True,
                },
            ),
        ),
        (
            ["drain", "web", "--override-fleet", "--reason", "black-holing, etcd down"],
            (
                "drain",
                ("web",),
                {
                    "reason": "black-holing, etcd down",
                    "author": "token",
                    "expires_in_s": None,
                    "override_fleet": True,
                },
            ),
        ),
        (["undrain", "web"], ("undrain", ("web",), {"author": "token"})),
        (["undrain", "--all"], ("undrain", (None,), {"author": "token"})),
        (
            ["med", "web", "4294967295", "--reason", "shift", "--expires", "2h"],
            (
                "set_med",
                ("web", 4294967295),
                {"reason": "shift", "author": "token", "expires_in_s": 7200.0},
            ),
        ),
        (["med", "web", "--clear"], ("clear_med", ("web",), {"author": "token"})),
        (["ramp", "web", "advance"], ("ramp", ("web", RampAction.ADVANCE), {"author": "token"})),
        (["reload"], ("reload", (), {})),
        (
            ["state", "reset", "--reason", "disk fault"],
            ("state_reset", (), {"reason": "disk fault", "author": "token"}),
        ),
    ],
)
async def test_commands_reach_the_controller(
    agent: str, controller: FakeController, token_file: Path, argv: list[str], call: Any
) -> None:
    code, out, err = await run([*argv, "--url", agent, "--token-file", str(token_file)])
    assert (code, err) == (0, ""), err
    assert out
    assert controller.calls == [call]


async def test_token_file_from_the_environment(
    agent: str, controller: FakeController, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANYCAST_AGENT_URL", agent)
    monkeypatch.setenv("ANYCAST_AGENT_TOKEN_FILE", str(token_file))
    code, _, err = await run(["undrain", "web"])
    assert (code, err) == (0, "")


async def test_refused_requests_exit_1_with_the_error(
    agent: str, controller: FakeController, token_file: Path
) -> None:
    # No token at all (the default file does not exist here): 401.
    code, _, err = await run(["drain", "web", "--reason", "x", "--url", agent])
    assert code == 1
    assert "authorization required (HTTP 401)" in err
    auth = ["--url", agent, "--token-file", str(token_file)]
    code, _, err = await run(["drain", "nope", "--reason", "x", *auth])
    assert (code, "unknown service (HTTP 404)" in err) == (1, True)
    code, _, err = await run(["med", "web", "4294967296", "--reason", "x", *auth])
    assert code == 1
    assert "med: " in err and "(got 4294967296)" in err
    controller.fail = Refusal(RefusalKind.CONFLICT, "nothing to undrain")
    code, _, err = await run(["undrain", "web", *auth])
    assert (code, "nothing to undrain" in err) == (1, True)
    controller.fail = None
    controller.reload_errors = ["services[web].med: bad (got -1)"]
    code, _, err = await run(["reload", *auth])
    assert code == 1
    assert "  services[web].med: bad (got -1)" in err.splitlines()


@pytest.mark.parametrize(
    "argv",
    [
        ["drain", "--reason", "x"],
        ["drain", "web", "--all", "--reason", "x"],
        ["undrain"],
        ["med", "web"],
        ["med", "web", "5", "--clear"],
        ["med", "web", "5"],
        ["med", "web", "five", "--reason", "x"],
        ["status", "--url", "ftp://example"],
        ["status", "--url", "unix:relative.sock"],
        ["status", "--token-file", "/nonexistent/token"],
    ],
)
async def test_usage_errors_exit_2(argv: list[str]) -> None:
    code, _, err = await run(argv)
    assert code == 2
    assert err.startswith("anycast-agent")


def test_argparse_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        parse(["ramp", "web", "pause"])
    assert info.value.code == 2


async def test_unreachable_exits_3(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        code, _, err = await run(["status", "--url", f"http://127.0.0.1:{port}"])
    assert code == 3
    assert "cannot reach the agent" in err
    code, _, _ = await run(["status", "--url", f"unix:{tmp_path}/absent.sock"])
    assert code == 3


async def test_over_a_unix_socket(tmp_path: Path, controller: FakeController) -> None:
    path = tmp_path / "control.sock"
    async with ControlServer(controller, f"unix:{path}", None):
        code, out, err = await run(["ramp", "web", "hold", "--url", f"unix:{path}"])
        assert (code, err) == (0, "")
        code, out, _ = await run(["status", "--json", "--url", f"unix:{path}"])
        assert code == 0 and json.loads(out)["pop"] == "ams1"
    assert controller.calls == [("ramp", ("web", RampAction.HOLD), {"author": "local"})]


async def test_drain_all_asks_on_a_terminal(
    agent: str, controller: FakeController, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    argv = ["drain", "--all", "--reason", "r", "--url", agent, "--token-file", str(token_file)]
    code, _, err = await run(argv)
    assert code == 2 and "not confirmed" in err and controller.calls == []
    code, _, _ = await run(argv)
    assert code == 0 and len(controller.calls) == 1
    code, _, _ = await run([*argv, "--yes"])  # --yes never asks (the answers are used up)
    assert code == 0 and len(controller.calls) == 2


async def test_drain_on_stop_is_a_no_op_when_no_agent_answers_within_1s(tmp_path: Path) -> None:
    # systemd runs ExecStop after the agent exited on its own too: it must neither hang nor fail.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # connections complete in the kernel; nobody ever answers
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        started = asyncio.get_running_loop().time()
        code, out, err = await run(["drain", "--all", "--wait", "--on-stop", "--url", url])
        took = asyncio.get_running_loop().time() - started
    assert (code, err) == (0, "")
    assert "nothing to drain" in out
    assert took < 3.0
    code, out, _ = await run(["drain", "--all", "--on-stop", "--url", f"unix:{tmp_path}/no.sock"])
    assert code == 0 and "nothing to drain" in out


async def test_drain_without_a_reason_is_a_usage_error() -> None:
    code, _, err = await run(["drain", "web", "--url", "http://127.0.0.1:9"])
    assert code == 2 and "--reason is required" in err


async def test_drain_wait_gives_up_while_routes_are_held(agent: str, token_file: Path) -> None:
    argv = ["drain", "web", "--reason", "r", "--wait", "--wait-max", "0.6"]
    code, out, _ = await run([*argv, "--url", agent, "--token-file", str(token_file)])
    assert code == 1
    assert "waiting: ExaBGP still holds" in out and "gave up waiting after 0.6s" in out


def test_drain_wait_never_takes_a_failed_status_for_withdrawn() -> None:
    # Review: a 500 or a timeout while waiting printed "withdrawn" and let ExaBGP stop.
    answers = iter([..., {"error": "boom"}, {"services": [{"name": "web", "routes": []}]}])
    out = io.StringIO()
    assert wait_withdrawn(lambda: next(answers), "web", out, 5.0)
    assert out.getvalue().splitlines() == ["withdrawn: ExaBGP holds none of the drained routes"]
    out = io.StringIO()
    assert not wait_withdrawn(lambda: ..., "web", out, 0.0)
    assert "routes (unknown: no status) still held" in out.getvalue()
