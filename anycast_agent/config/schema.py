"""The config file's schema: every key, its type, its default and the cross-key checks."""

from __future__ import annotations

import math
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from anycast_agent.config.checks import Target
from anycast_agent.config.fleet import Fleet
from anycast_agent.config.types import (
    ASN,
    ENV_PREFIX,
    Address,
    Community,
    Duration,
    Med,
    Name,
    Network,
    Strict,
)
from anycast_agent.core.spec import AddressMode, OnDown, RampMode
from anycast_agent.model import MED_DRAIN, MED_MAX, Family


class Neighbor(Strict):
    address: Address
    local_address: Address
    peer_as: ASN
    families: tuple[Family, ...] = ()

    @model_validator(mode="after")
    def _families(self) -> Neighbor:
        if self.address.version != self.local_address.version:
            raise ValueError(
                f"address {self.address} and local_address {self.local_address} "
                "are of different IP versions"
            )
        if not self.families:
            object.__setattr__(self, "families", (Family.of(self.address),))
        if self.families != (Family.of(self.address),):
            # `next-hop self` over an IPv4 session cannot carry an IPv6 route, nor the reverse.
            raise ValueError(
                f"families {[str(f) for f in self.families]}: a session to {self.address} "
                f"carries {Family.of(self.address)} only (use a second neighbor for the other)"
            )
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families repeated: {[str(f) for f in self.families]}")
        return self


class Bgp(Strict):
    local_as: ASN
    router_id: IPv4Address
    hold_time: Duration = 9.0
    neighbors: tuple[Neighbor, ...] = Field(min_length=1)

    @field_validator("hold_time")
    @classmethod
    def _hold(cls, v: float) -> float:
        if v != 0 and not 3 <= v <= 65535:
            raise ValueError(f"hold_time must be 0 or between 3s and 65535s, got {v:g}s")
        if v != int(v):
            raise ValueError(f"hold_time must be whole seconds, got {v:g}s")
        return v

    @field_validator("neighbors")
    @classmethod
    def _unique(cls, v: tuple[Neighbor, ...]) -> tuple[Neighbor, ...]:
        seen = [str(n.address) for n in v]
        dupes = sorted({a for a in seen if seen.count(a) > 1})
        if dupes:
            raise ValueError(f"duplicate neighbor address {dupes[0]}")
        return v


class Control(Strict):
    """The control endpoint: `HOST:PORT` (IPv6 as `[::1]:9179`) or `unix:/path/to.sock`."""

    listen: str = "127.0.0.1:9179"
    token_file: Path | None = None
    # Host names a request may carry (DNS rebinding defence); empty: the listen address,
    # localhost, 127.0.0.1 and ::1. Not checked on a unix socket.
    allowed_hosts: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9.:\[\]-]{1,255}$")], ...] = ()
    # Connections at once; more are closed as they come (idle clients must not take the
    # file descriptors the probes need).
    max_connections: Annotated[int, Field(ge=1, le=4096)] = 64

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.startswith("unix:"):
            if not v[5:].startswith("/"):
                raise ValueError(f"a unix socket needs an absolute path, got {v!r}")
            return v
        host, sep, port = v.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            ip_address(host)
        except ValueError:
            raise ValueError(f"expected IP:PORT or unix:/path, got {v!r}") from None
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected IP:PORT or unix:/path, got {v!r}")
        return v

    @model_validator(mode="after")
    def _token_off_loopback(self) -> Control:
        if self.token_file is None and not self.is_local():
            raise ValueError(f"listen {self.listen!r} is not loopback: a token_file is required")
        return self

    def is_local(self) -> bool:
        if self.listen.startswith("unix:"):
            return True
        host = self.listen.rpartition(":")[0].removeprefix("[").removesuffix("]")
        return ip_address(host).is_loopback

    def address(self) -> tuple[str, int] | str:
        """(host, port) for TCP, or the socket path for a unix socket."""
        if self.listen.startswith("unix:"):
            return self.listen[5:]
        host, _, port = self.listen.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


class Resolving(Strict):
    """Host-name targets: looked up in the background every `refresh`, each lookup given up
    after `deadline`; the last good addresses stay in use when a lookup fails."""

    refresh: Duration = 30.0
    deadline: Duration = 2.0

    @model_validator(mode="after")
    def _positive(self) -> Resolving:
        if self.refresh <= 0 or self.deadline <= 0:
            raise ValueError(
                f"refresh and deadline must be > 0, got {self.refresh:g}s, {self.deadline:g}s"
            )
        return self


class Addresses(Strict):
    """The VIP gate: `check` withholds a prefix whose address is missing on `interface`;
    `manage` adds the address before announcing (and removes it on withdraw if asked)."""

    mode: AddressMode = AddressMode.OFF
    interface: str = Field(default="lo", pattern=r"^[A-Za-z0-9_.:@-]{1,15}$")
    remove_on_withdraw: bool = False


class Ramp(Strict):
    """Staged re-announcement after DOWN→UP, on undrain and on first start (DESIGN §3.4)."""

    stages: tuple[Annotated[int, Field(ge=1, le=100)], ...] = (25, 50, 100)
    stage_hold: Duration = 60.0
    mode: RampMode = RampMode.AUTO

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or v[-1] != 100 or list(v) != sorted(set(v)):
            raise ValueError(f"stages must rise strictly and end at 100, got {list(v)}")
        return v


class LoadTier(Strict):
    load: Annotated[float, Field(gt=0, le=1)]
    med: Annotated[int, Field(ge=0, le=MED_MAX)]


class Damping(Strict):
    """RFC 2439-style flap damping of a service's UP/DOWN changes."""

    enabled: bool = True
    penalty: Annotated[float, Field(gt=0)] = 1000.0  # added per UP↔DOWN change
    half_life: Duration = 60.0
    suppress: Annotated[float, Field(gt=0)] = 3000.0  # withdrawn while the penalty is above
    reuse: Annotated[float, Field(gt=0)] = 750.0  # ... until it decays below this

    @model_validator(mode="after")
    def _thresholds(self) -> Damping:
        if self.reuse >= self.suppress:
            raise ValueError(f"reuse {self.reuse:g} must be below suppress {self.suppress:g}")
        if self.half_life <= 0:
            raise ValueError("half_life must be > 0")
        return self


DEFAULT_LOAD_TIERS = (
    LoadTier(load=0.70, med=100),
    LoadTier(load=0.85, med=300),
    LoadTier(load=0.95, med=1000),
)


class TrafficEngineering(Strict):
    """Keys a service may set, falling back to `defaults` (DESIGN §5)."""

    med_hold: Duration | None = None
    min_update_interval: Duration | None = None
    capacity_penalty: Annotated[int, Field(ge=0, le=MED_MAX)] | None = None
    load_tiers: tuple[LoadTier, ...] | None = None
    drain_grace: Duration | None = None
    damping: Damping | None = None
    ramp: Ramp | None = None

    @field_validator("load_tiers")
    @classmethod
    def _tiers(cls, v: tuple[LoadTier, ...] | None) -> tuple[LoadTier, ...] | None:
        if v is not None:
            loads = [t.load for t in v]
            if loads != sorted(set(loads)):
                raise ValueError(f"load tiers must rise strictly, got {loads}")
        return v


class Defaults(Strict):
    interval: Duration = 1.0
    timeout: Duration = 0.8
    fall: Annotated[int, Field(ge=1, le=100)] = 3
    rise: Annotated[int, Field(ge=1, le=100)] = 2
    med_hold: Duration = 30.0
    min_update_interval: Duration = 10.0
    capacity_penalty: Annotated[int, Field(ge=0, le=MED_MAX)] = 1000
    load_tiers: tuple[LoadTier, ...] = DEFAULT_LOAD_TIERS
    drain_grace: Duration = 30.0
    damping: Damping = Damping()
    ramp: Ramp = Ramp()


class Service(TrafficEngineering):
    name: Name
    prefixes: tuple[Network, ...] = Field(min_length=1)
    med: Med = 100
    med_down: Med = MED_DRAIN
    communities: tuple[Community, ...] = ()
    min_healthy: Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=r"^\d{1,3}%$")] = 1
    on_down: OnDown = OnDown.WITHDRAW
    neighbors: tuple[Address, ...] = ()  # empty: every configured neighbor
    targets: tuple[Target, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _checks(self) -> Service:
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"targets: duplicate target name {dupes[0]!r}")
        texts = [str(p) for p in self.prefixes]
        dupes = sorted({p for p in texts if texts.count(p) > 1})
        if dupes:
            raise ValueError(f"prefixes: duplicate prefix {dupes[0]}")
        if isinstance(self.min_healthy, str) and not 1 <= int(self.min_healthy[:-1]) <= 100:
            raise ValueError(f"min_healthy percent must be 1%-100%, got {self.min_healthy!r}")
        if isinstance(self.min_healthy, int) and self.min_healthy > len(self.targets):
            raise ValueError(
                f"min_healthy {self.min_healthy} exceeds the {len(self.targets)} targets "
                f"of service {self.name!r}: it could never be up"
            )
        return self

    def quorum(self) -> int:
        """How many targets must be healthy for the service to be UP."""
        if isinstance(self.min_healthy, int):
            return self.min_healthy
        return max(1, math.ceil(int(self.min_healthy[:-1]) * len(self.targets) / 100))


class AgentConfig(BaseSettings):
    """The whole agent configuration. Build it with `load_config`, never by hand in the shell."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    pop: Name
    state_dir: Path = Path("/var/lib/anycast-agent")
    control: Control = Control()
    bgp: Bgp
    addresses: Addresses = Addresses()
    defaults: Defaults = Defaults()
    services: tuple[Service, ...] = ()
    # How long checker faults may blind the agent to every target before they stop counting
    # as progress: the watchdog then fails the PoP closed, as for a hang (DESIGN §3.2a).
    checker_fault_max: Duration = 300.0
    # How often ExaBGP's adj-rib-out is read again and corrected where it differs from what
    # ExaBGP acknowledged (it reloaded its own config: R27); also soon after a session came up.
    resync_interval: Annotated[Duration, Field(ge=1.0)] = 60.0
    canary: bool = True  # probe a loopback listener of the agent's own (DESIGN §3.2a)
    resolver: Resolving = Resolving()
    fleet: Fleet | None = None  # etcd coordination; absent: standalone (FLEET.md)
    # Deprecated (DESIGN §3.6): exit never withdraws. `false` is still accepted, because
    # configs and last-good copies in the field carry it; `true` is refused.
    withdraw_on_exit: bool | None = None

    @field_validator("withdraw_on_exit")
    @classmethod
    def _no_withdraw_on_exit(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError(
                "true is no longer supported: the agent never withdraws on exit (a respawn "
                "would flap every route); drain first (`anycast-agent drain --all`), or use "
                "the unit's drain-on-stop"
            )
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment overrides the file (the file arrives as init kwargs).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _cross(self) -> AgentConfig:
        names = [s.name for s in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"services: duplicate service name {dupes[0]!r}")
        owner: dict[str, str] = {}
        for svc in self.services:
            for p in svc.prefixes:
                if str(p) in owner:
                    raise ValueError(
                        f"services[{svc.name}].prefixes: {p} is already in service "
                        f"{owner[str(p)]!r}"
                    )
                owner[str(p)] = svc.name
        known = {n.address for n in self.bgp.neighbors}
        for svc in self.services:
            for addr in svc.neighbors:
                if addr not in known:
                    raise ValueError(f"services[{svc.name}].neighbors: unknown neighbor {addr}")
            families = {f for n in self.neighbors_of(svc) for f in n.families}
            for p in svc.prefixes:
                if Family.of(p) not in families:
                    raise ValueError(
                        f"services[{svc.name}].prefixes: {p} is {Family.of(p)} but no neighbor "
                        f"of the service carries the {Family.of(p)} family (ExaBGP would never "
                        "send it)"
                    )
            for t in svc.targets:
                interval, timeout = self.interval_s(t), self.timeout_s(t)
                if interval <= 0:
                    raise ValueError(
                        f"services[{svc.name}].targets[{t.name}].interval: must be > 0"
                    )
                if timeout <= 0 or timeout >= interval:
                    raise ValueError(
                        f"services[{svc.name}].targets[{t.name}].timeout: {timeout:g}s must be "
                        f"> 0 and < the interval {interval:g}s"
                    )
        return self

    def neighbors_of(self, service: Service) -> tuple[Neighbor, ...]:
        if not service.neighbors:
            return self.bgp.neighbors
        wanted = set(service.neighbors)
        return tuple(n for n in self.bgp.neighbors if n.address in wanted)

    def slowest_probe_s(self) -> float:
        """The longest probe interval plus its timeout (0 without targets)."""
        periods = [self.interval_s(t) + self.timeout_s(t) for s in self.services for t in s.targets]
        return max(periods, default=0.0)

    def interval_s(self, t: Target) -> float:
        return t.interval if t.interval is not None else self.defaults.interval

    def timeout_s(self, t: Target) -> float:
        return t.timeout if t.timeout is not None else self.defaults.timeout

    def fall(self, t: Target) -> int:
        return t.fall if t.fall is not None else self.defaults.fall

    def rise(self, t: Target) -> int:
        return t.rise if t.rise is not None else self.defaults.rise


def frozen_keys_changed(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Why `new` cannot replace `old` while running (empty: a reload may apply it)."""
    return [
        f"{key}: changed, but it cannot change while running ({why})"
        for key, why in (
            ("bgp", "ExaBGP's sessions come from it: render exabgp, drain, restart"),
            ("state_dir", "restart the agent"),
            ("control", "restart the agent"),
            ("fleet", "restart the agent"),
        )
        if getattr(new, key) != getattr(old, key)
    ]
