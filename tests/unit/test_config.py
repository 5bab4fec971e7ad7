"""Config validation: every bad value is named with its key path; check-config exits 0 or 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anycast_agent.cli import main
from anycast_agent.config import load_config, parse_duration
from anycast_agent.errors import ConfigError

GOOD = {
    "pop": "ams1",
    "state_dir": "/tmp/anycast-agent-unit",
    "bgp": {
        "local_as": 65001,
        "router_id": "198.51.100.2",
        "hold_time": "9s",
        "neighbors": [
            {"address": "198.51.100.1", "local_address": "198.51.100.2", "peer_as": 65000},
        ],
    },
    "defaults": {"interval": "1s", "timeout": "800ms"},
    "services": [
        {
            "name": "web",
            "prefixes": ["192.0.2.10/32"],
            "targets": [
                {"name": "edge1", "http": {"url": "http://203.0.113.11:8080/health"}},
                {"name": "edge2", "tcp": {"host": "203.0.113.12", "port": 443}},
                {"name": "edge3", "exec": {"argv": ["/bin/true"]}},
                {"name": "edge4", "dns": {"server": "203.0.113.13", "name": "example.test"}},
            ],
        }
    ],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def mutate(path: str, value: object) -> dict[str, object]:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    last = keys[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


def problems(tmp_path: Path, data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    return info.value.problems


def test_good_config_loads_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.services[0].targets[0].http is not None
    assert cfg.timeout_s(cfg.services[0].targets[0]) == 0.8
    with pytest.raises(Exception, match="frozen"):
        cfg.pop = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"), [("1s", 1.0), ("800ms", 0.8), (2, 2.0), ("0.25", 0.25), ("2m", 120.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["1 sec", "-1s", "fast", True, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "services.0.prefixes.0",
            "192.0.2.300/32",
            "services[web].prefixes[0]: invalid prefix '192.0.2.300/32'",
        ),
        (
            "services.0.prefixes.0",
            "192.0.2.10/24",
            "services[web].prefixes[0]: invalid prefix '192.0.2.10/24'",
        ),
        (
            "services.0.targets.1.name",
            "edge1",
            "services[web]: targets: duplicate target name 'edge1'",
        ),
        (
            "defaults.timeout",
            "1s",
            "services[web].targets[edge1].timeout: 1s must be > 0 and < the interval 1s",
        ),
        ("bgp.local_as", 0, "bgp.local_as: Input should be greater than or equal to 1 (got 0)"),
        (
            "resync_interval",
            "100ms",
            "resync_interval: Input should be greater than or equal to 1 (got '100ms')",
        ),
        (
            "bgp.hold_time",
            "2s",
            "bgp.hold_time: hold_time must be 0 or between 3s and 65535s, got 2s",
        ),
        (
            "services.0.communities",
            ["65001:100000"],
            "services[web].communities[0]: invalid community '65001:100000'",
        ),
        ("services.0.frobnicate", 1, "services[web].frobnicate: unknown key (got 1)"),
        (
            "services.0.targets.0.http.url",
            "ftp://x",
            "services[web].targets[edge1].http.url: expected an http:// or https:// URL",
        ),
        (
            "services.0.prefixes.0",
            "2001:db8::10/128",
            "services[web].prefixes: 2001:db8::10/128 is ipv6 but no neighbor",
        ),
        ("services.0.min_healthy", 5, "min_healthy 5 exceeds the 4 targets"),
        (
            "bgp.neighbors.0.address",
            "198.51.100.999",
            "bgp.neighbors[0].address: invalid IP address '198.51.100.999'",
        ),
    ],
)
def test_errors_name_the_key_and_value(
    tmp_path: Path, path: str, value: object, expected: str
) -> None:
    found = problems(tmp_path, mutate(path, value))
    assert any(expected in p for p in found), found


def test_duplicate_prefix_across_services(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["services"].append({**data["services"][0], "name": "dns"})
    assert any("192.0.2.10/32 is already in service 'web'" in p for p in problems(tmp_path, data))


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYCAST_AGENT_POP", "fra2")
    monkeypatch.setenv("ANYCAST_AGENT_DEFAULTS__FALL", "5")
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.pop == "fra2" and cfg.defaults.fall == 5


def test_unreadable_and_non_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("pop: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write(tmp_path, GOOD))]) == 0
    assert "ok (pop ams1, 1 services, 4 targets" in capsys.readouterr().out
    bad = write(tmp_path, mutate("services.0.prefixes.0", "192.0.2.300/32"))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "192.0.2.300/32" in err


def test_withdraw_on_exit_false_is_accepted_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Configs and last-good copies in the field carry it: refusing it would make a respawned
    # agent exit on its own last-good config.
    path = write(tmp_path, {**GOOD, "withdraw_on_exit": False})
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "ok (pop ams1" in captured.out
    assert "warning: withdraw_on_exit is deprecated and does nothing" in captured.err


def test_withdraw_on_exit_true_is_refused_with_a_pointer_to_drain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {**GOOD, "withdraw_on_exit": True})
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    [problem] = raised.value.problems
    assert problem.startswith("withdraw_on_exit: true is no longer supported")
    assert "anycast-agent drain --all" in problem
    assert main(["check-config", str(path)]) == 2
    assert "withdraw_on_exit" in capsys.readouterr().err


BOMB = "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
    for p, n in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"1: x\npop: ams1\n", "key 1 is not a string"),
        (b"# caf\xe9\npop: ams1\n", "not UTF-8 text: byte 5"),
        (b"pop: ams1\nservices: []\npop: ams2\n", "duplicate key 'pop'"),
        (b"pop: ams1\n_env_file: /etc/passwd\n", "_env_file: unknown key"),
        (b"pop: ams1\n_cli_parse_args: true\n", "_cli_parse_args: unknown key"),
        # Found by `make fuzz`: the YAML reader refused it before the guarded block.
        (b"\x00pop: ams1\n", "not valid YAML: unacceptable character #x0000"),
        (b"pop: " + b"[" * 5000 + b"\n", "exceeded maximum nesting depth"),  # make fuzz too
        (b"pop: ams1\n_secrets_dir: /\n", "_secrets_dir: unknown key"),
        (BOMB.encode() + b"pop: [*i]\n", "aliases expand to 926177116 YAML nodes"),
        (b"pop: ams1\n#" + b"x" * (1 << 20) + b"\n", "over 1048576"),
    ],
    ids=[
        "non-string-key",
        "latin1",
        "duplicate-key",
        "env-file",
        "cli-args",
        "nul-byte",
        "deep-nesting",
        "secrets-dir",
        "billion-laughs",
        "too-big",
    ],
)
def test_hostile_files_are_config_errors_naming_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes, said: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert said in " ".join(raised.value.problems)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("host", "a\r\nX-Injected: 1", "no spaces or control characters"),
        ("host", "edge one", "no spaces or control characters"),
        ("server_name", "a\x00b", "no spaces or control characters"),
        ("host", "xn--" + "a" * 70 + ".example", None),  # ASCII: taken as it is
        ("load_header", "X-Load: 1", "invalid header name"),
    ],
)
def test_strings_that_reach_a_request_are_validated(
    tmp_path: Path, field: str, value: str, said: str | None
) -> None:
    data = mutate("services.0.targets.0.http." + field, value)
    if said is None:
        load_config(write(tmp_path, data))
        return
    with pytest.raises(ConfigError, match=said):
        load_config(write(tmp_path, data))


def test_a_non_ascii_host_becomes_its_idna_name(tmp_path: Path) -> None:
    data = mutate("services.0.targets.0.http.host", "bücher.example")
    config = load_config(write(tmp_path, data))
    check = config.services[0].targets[0].http
    assert check is not None and check.host == "xn--bcher-kva.example"
