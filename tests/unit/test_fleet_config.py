"""The `fleet:` key: what it accepts, the error naming each bad value, and what it turns on."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from anycast_agent.config import load_config, pop_spec, reloadable
from tests.unit.test_config import GOOD, problems, write

FLEET = {"endpoints": ["http://127.0.0.1:2379", "http://127.0.0.1:2479"], "min_pops": 2}


def with_fleet(**fleet: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    data["fleet"] = {**FLEET, **fleet}
    return data


def test_no_fleet_key_is_standalone_and_a_fleet_key_turns_the_guard_on(tmp_path: Path) -> None:
    assert pop_spec(load_config(write(tmp_path, GOOD))).fleet is False
    cfg = load_config(write(tmp_path, with_fleet()))
    assert pop_spec(cfg).fleet is True
    assert cfg.fleet is not None and cfg.fleet.prefix == "/anycast/v1/"
    assert (cfg.fleet.lease_ttl, cfg.fleet.budget.slots, cfg.fleet.budget.window) == (9, 1, 300)


@pytest.mark.parametrize(
    ("fleet", "said"),
    [
        ({"endpoints": ["etcd:2379"]}, "expected http(s)://HOST:PORT, got 'etcd:2379'"),
        ({"endpoints": ["http://127.0.0.1:99999"]}, "bad port in 'http://127.0.0.1:99999'"),
        ({"endpoints": ["http://127.0.0.1:2379/v3"]}, "got 'http://127.0.0.1:2379/v3'"),
        ({"endpoints": []}, "fleet.endpoints"),
        ({"endpoints": ["https://127.0.0.1:2379"]}, "https endpoints need tls"),
        ({"tls": {"ca_file": "/etc/ca.pem"}}, "https endpoints need tls: {ca_file: ...}, and tls"),
        ({"timeout": "4s", "lease_ttl": "9s"}, "timeout 4s must be under lease_ttl/3 (3s)"),
        ({"lease_ttl": "1s"}, "fleet.lease_ttl"),
        ({"min_pops": -1}, "fleet.min_pops"),
        ({"budget": {"slots": 0}}, "fleet.budget.slots"),
        ({"prefix": "anycast"}, "fleet.prefix"),
        ({"auth": {"user": "ams 1", "password_file": "/p"}}, "fleet.auth.user"),
        (
            {"tls": {"ca_file": "/c", "cert_file": "/x"}, "endpoints": ["https://127.0.0.1:1"]},
            "cert_file and key_file go together",
        ),
        ({"nonsense": 1}, "fleet.nonsense"),
    ],
)
def test_a_bad_fleet_value_is_named(tmp_path: Path, fleet: dict[str, Any], said: str) -> None:
    found = problems(tmp_path, with_fleet(**fleet))
    assert any(said in p for p in found), found


def test_a_reload_cannot_turn_the_fleet_on_or_change_it(tmp_path: Path) -> None:
    running = load_config(write(tmp_path, GOOD))
    assert reloadable(write(tmp_path, with_fleet()), running) == [
        "fleet: changed, but it cannot change while running (restart the agent)"
    ]
