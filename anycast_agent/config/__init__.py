"""The agent's configuration: YAML plus ANYCAST_AGENT_* overrides, validated once and frozen.

types (durations, prefixes, ...) · checks (what a target probes) · schema (every key) ·
resolve (defaults filled in: the plain values the core reads) · load (file → config or errors).
"""

from anycast_agent.config.checks import DnsCheck, ExecCheck, HttpCheck, Target, TcpCheck, Timing
from anycast_agent.config.load import deprecations, format_errors, load_config, reloadable
from anycast_agent.config.resolve import policy, pop_spec, service_spec
from anycast_agent.config.schema import (
    Addresses,
    AgentConfig,
    Bgp,
    Control,
    Damping,
    Defaults,
    Neighbor,
    Ramp,
    Service,
    frozen_keys_changed,
)
from anycast_agent.config.types import ENV_PREFIX, NAME_RE, parse_duration
from anycast_agent.core.spec import AddressMode, OnDown, RampMode

__all__ = [
    "ENV_PREFIX",
    "NAME_RE",
    "AddressMode",
    "Addresses",
    "AgentConfig",
    "Bgp",
    "Control",
    "Damping",
    "Defaults",
    "DnsCheck",
    "ExecCheck",
    "HttpCheck",
    "Neighbor",
    "OnDown",
    "Ramp",
    "RampMode",
    "Service",
    "Target",
    "TcpCheck",
    "Timing",
    "deprecations",
    "format_errors",
    "frozen_keys_changed",
    "load_config",
    "parse_duration",
    "policy",
    "pop_spec",
    "reloadable",
    "service_spec",
]
