"""Shared builders for unit tests: configs from small dicts."""

from __future__ import annotations

from typing import Any

from anycast_agent.config import AgentConfig


def make_config(**overrides: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "pop": "ams1",
        "state_dir": "/nonexistent/anycast-agent-test",
        "bgp": {
            "local_as": 65001,
            "router_id": "198.51.100.2",
            "neighbors": [
                {"address": "198.51.100.1", "local_address": "198.51.100.2", "peer_as": 65000},
                {
                    "address": "2001:db8:100::1",
                    "local_address": "2001:db8:100::2",
                    "peer_as": 65000,
                },
            ],
        },
        "services": [
            {
                "name": "web",
                "prefixes": ["192.0.2.10/32", "2001:db8::10/128"],
                "med": 100,
                "communities": ["65001:100"],
                "targets": [
                    {"name": "edge1", "tcp": {"host": "203.0.113.11", "port": 80}},
                    {"name": "edge2", "tcp": {"host": "203.0.113.12", "port": 80}},
                ],
            }
        ],
    }
    data.update(overrides)
    return AgentConfig(**data)
