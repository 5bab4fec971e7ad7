"""The coordinator for a config's `fleet:` key: its etcd client and settings, built once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from anycast_agent import __version__
from anycast_agent.config import AgentConfig
from anycast_agent.core.events import Event, Instant
from anycast_agent.errors import ConfigError
from anycast_agent.fleet.coordinator import Coordinator, FleetSettings
from anycast_agent.fleet.etcd_http import EtcdClient, TlsFiles


def coordinator_for(
    config: AgentConfig, report: Callable[[Event], Awaitable[None]], now: Callable[[], Instant]
) -> Coordinator:
    """Raises ConfigError naming the file when the etcd password cannot be read."""
    fleet = config.fleet
    assert fleet is not None
    user = password = None
    if fleet.auth is not None:
        user = fleet.auth.user
        try:
            password = fleet.auth.password_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"fleet.auth.password_file: cannot read it: {exc.__class__.__name__}"
            raise ConfigError(str(fleet.auth.password_file), [problem]) from None
    tls = None
    if fleet.tls is not None:
        tls = TlsFiles(fleet.tls.ca_file, fleet.tls.cert_file, fleet.tls.key_file)
    client = EtcdClient(
        fleet.endpoints, timeout_s=fleet.timeout, tls=tls, user=user, password=password
    )
    settings = FleetSettings(
        prefix=fleet.prefix,
        pop=config.pop,
        region=fleet.region,
        version=__version__,
        min_pops=fleet.min_pops,
        budget_slots=fleet.budget.slots,
        budget_window_s=fleet.budget.window,
        lease_ttl_s=fleet.lease_ttl,
        stale_after_s=fleet.stale_after,
        state_dir=config.state_dir,
    )
    return Coordinator(client, settings, report, now)
