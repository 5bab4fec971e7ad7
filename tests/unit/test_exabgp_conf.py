"""The shipped exabgp.conf is exactly what `render exabgp` makes of the shipped agent config."""

from __future__ import annotations

from pathlib import Path

import pytest

from anycast_agent.cli import main
from anycast_agent.config import load_config
from anycast_agent.exabgp_conf import render_exabgp

EXABGP_DIR = Path(__file__).resolve().parents[2] / "exabgp"


def test_shipped_conf_matches_renderer(capsys: pytest.CaptureFixture[str]) -> None:
    example = EXABGP_DIR / "anycast-agent.example.yaml"
    args = [
        "render",
        "exabgp",
        "--config",
        str(example),
        "--config-path",
        "/etc/anycast-agent/agent.yaml",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out == (EXABGP_DIR / "exabgp.conf").read_text()


def test_render_has_one_neighbor_block_per_session_with_families() -> None:
    cfg = load_config(EXABGP_DIR / "anycast-agent.example.yaml")
    text = render_exabgp(cfg, "/usr/bin/env anycast-agent run --config /x.yaml")
    assert text.count("neighbor 198.51.100.1 {") == 1
    assert "local-address 2001:db8:100::2;" in text
    assert "        ipv6 unicast;" in text
    assert "processes [ anycast-agent ];" in text and "encoder json;" in text


def test_render_refuses_a_command_that_breaks_the_config() -> None:
    cfg = load_config(EXABGP_DIR / "anycast-agent.example.yaml")
    with pytest.raises(ValueError, match="cannot contain"):
        render_exabgp(cfg, "anycast-agent run; }")
