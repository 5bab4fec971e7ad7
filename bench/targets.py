"""The N edge targets a bench probes: addresses in 2001:db8::/32, one nginx port, one config."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml

# Every address of this /64 is local inside the bench namespace (one `local` route), so N can
# reach thousands without adding thousands of addresses.
TARGET_NET = ipaddress.IPv6Network("2001:db8:b::/64")
HTTP_PORT = 8080
TARGETS_PER_SERVICE = 10
# Service prefixes: /32s from the IPv4 documentation ranges (enough for 508 services).
PREFIX_POOLS = (ipaddress.IPv4Network("203.0.113.0/24"), ipaddress.IPv4Network("198.51.100.0/24"))
NEIGHBOR = "192.0.2.1"
LOCAL = "192.0.2.2"


@dataclass(frozen=True, slots=True)
class Timing:
    interval_s: float = 1.0
    timeout_s: float = 0.8
    fall: int = 3
    rise: int = 2


def target_address(i: int) -> str:
    return str(TARGET_NET.network_address + i + 1)


def target_url(i: int) -> str:
    return f"http://[{target_address(i)}]:{HTTP_PORT}/health"


PREFIXES_AVAILABLE = sum(pool.num_addresses - 2 for pool in PREFIX_POOLS)


def service_prefixes(count: int) -> list[str]:
    hosts = [str(a) for pool in PREFIX_POOLS for a in pool.hosts()]
    if count > len(hosts):
        raise ValueError(f"{count} services need more than the {len(hosts)} prefixes available")
    return [f"{h}/32" for h in hosts[:count]]


def agent_config(
    n: int,
    state_dir: Path,
    *,
    timing: Timing = Timing(),
    keepalive: bool = False,
    urls: list[str] | None = None,
    control_listen: str | None = None,
    per_service: int = TARGETS_PER_SERVICE,
) -> dict[str, object]:
    """An agent config probing n targets (services of `per_service` targets each, more when
    there are not enough prefixes for that many services)."""
    urls = urls if urls is not None else [target_url(i) for i in range(n)]
    per_service = max(per_service, -(-len(urls) // PREFIXES_AVAILABLE))
    groups = [urls[i : i + per_service] for i in range(0, len(urls), per_service)]
    prefixes = service_prefixes(len(groups))
    http_extra: dict[str, object] = {"keepalive": True} if keepalive else {}
    config: dict[str, object] = {
        "pop": "bench1",
        "state_dir": str(state_dir),
        "bgp": {
            "local_as": 65001,
            "router_id": LOCAL,
            "neighbors": [{"address": NEIGHBOR, "local_address": LOCAL, "peer_as": 65000}],
        },
        "defaults": {
            "interval": timing.interval_s,
            "timeout": timing.timeout_s,
            "fall": timing.fall,
            "rise": timing.rise,
        },
        "services": [
            {
                "name": f"svc{s}",
                "prefixes": [prefixes[s]],
                "ramp": {"stages": [100]},
                "targets": [
                    {"name": f"edge{s}-{j}", "http": {"url": url, **http_extra}}
                    for j, url in enumerate(group)
                ],
            }
            for s, group in enumerate(groups)
        ],
    }
    if control_listen is not None:
        config["control"] = {"listen": control_listen}
    return config


def write_config(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
