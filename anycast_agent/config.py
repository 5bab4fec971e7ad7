"""The agent's configuration: YAML plus ANYCAST_AGENT_* overrides, validated once and frozen."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from anycast_agent.errors import ConfigError
from anycast_agent.model import MED_DRAIN, MED_MAX, Family

ENV_PREFIX = "ANYCAST_AGENT_"

_DURATION = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`1s`, `800ms`, `2m` or a plain number of seconds → seconds (float, never negative)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 1s or 800ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m["num"]) * _UNIT_S[m["unit"]]
    else:
        raise ValueError(f"expected a duration like 1s or 800ms, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a finite number ≥ 0, got {value!r}")
    return seconds


def _network(value: object) -> IPv4Network | IPv6Network:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a prefix like 192.0.2.10/32, got {value!r}")
    try:
        return ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid prefix {value!r}: {exc}") from None


def _address(value: object) -> IPv4Address | IPv6Address:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address, got {value!r}")
    try:
        return ip_address(value)
    except ValueError:
        raise ValueError(f"invalid IP address {value!r}") from None


def _community(value: object) -> str:
    text = str(value)
    m = re.fullmatch(r"(\d{1,5}):(\d{1,5})", text)
    if not m or int(m[1]) > 65535 or int(m[2]) > 65535:
        raise ValueError(f"invalid community {value!r}: expected ASN:VALUE, both 0-65535")
    return f"{int(m[1])}:{int(m[2])}"


Duration: TypeAlias = Annotated[float, BeforeValidator(parse_duration)]
Network: TypeAlias = Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)]
Address: TypeAlias = Annotated[IPv4Address | IPv6Address, BeforeValidator(_address)]
Community: TypeAlias = Annotated[str, BeforeValidator(_community)]
ASN: TypeAlias = Annotated[int, Field(ge=1, le=4294967294)]
Med: TypeAlias = Annotated[int, Field(ge=0, le=MED_MAX)]
Name: TypeAlias = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnDown(enum.StrEnum):
    WITHDRAW = "withdraw"
    DEPREFER = "deprefer"


class AddressMode(enum.StrEnum):
    OFF = "off"
    CHECK = "check"
    MANAGE = "manage"


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


class Addresses(Strict):
    """The VIP gate: `check` withholds a prefix whose address is missing on `interface`;
    `manage` adds the address before announcing (and removes it on withdraw if asked)."""

    mode: AddressMode = AddressMode.OFF
    interface: str = Field(default="lo", pattern=r"^[A-Za-z0-9_.:@-]{1,15}$")
    remove_on_withdraw: bool = False


class Timing(Strict):
    """Probe timing and state-machine thresholds; per target, falling back to `defaults`."""

    interval: Duration | None = None
    timeout: Duration | None = None
    fall: Annotated[int, Field(ge=1, le=100)] | None = None
    rise: Annotated[int, Field(ge=1, le=100)] | None = None


class RampMode(enum.StrEnum):
    AUTO = "auto"
    NEIGHBORS = "neighbors"
    PREFIXES = "prefixes"
    PREPEND = "prepend"


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


class HttpCheck(Strict):
    url: str
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: tuple[Annotated[int, Field(ge=100, le=599)], ...] = (200,)
    body_regex: str | None = None
    host: str | None = None
    verify_tls: bool = True
    server_name: str | None = None  # TLS SNI when it differs from the URL's host
    load_header: str | None = None
    load_json_field: str | None = None
    # Reuse one connection per target (fresh one at least every 30 probes); default off, so a
    # server that stops accepting connections fails its next check.
    keepalive: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {v!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"invalid port in URL {v!r}") from None
        if port == 0 or any(not c.isprintable() for c in v):
            raise ValueError(f"invalid URL {v!r}")
        return v

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {v!r}: {exc}") from None
        return v


class TcpCheck(Strict):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]


class ExecCheck(Strict):
    argv: tuple[str, ...] = Field(min_length=1)


class DnsCheck(Strict):
    server: Address
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    name: str
    qtype: Literal["A", "AAAA", "TXT", "SOA", "NS", "CNAME"] = "A"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        labels = v.rstrip(".").split(".")
        ok = (
            v.isascii()
            and len(v.rstrip(".")) <= 253
            and all(0 < len(label) <= 63 for label in labels)
            and all(re.fullmatch(r"[A-Za-z0-9_-]+", label) for label in labels)
        )
        if not ok:
            raise ValueError(f"invalid DNS name {v!r}")
        return v


class Target(Timing):
    name: Name
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    exec: ExecCheck | None = None
    dns: DnsCheck | None = None

    @model_validator(mode="after")
    def _one_check(self) -> Target:
        kinds = [k for k in ("http", "tcp", "exec", "dns") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"target {self.name!r} needs exactly one of http, tcp, exec, dns; "
                f"got {kinds or 'none'}"
            )
        return self

    @property
    def check(self) -> HttpCheck | TcpCheck | ExecCheck | DnsCheck:
        return next(c for c in (self.http, self.tcp, self.exec, self.dns) if c is not None)


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
    withdraw_on_exit: bool = False

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

    def interval_s(self, t: Target) -> float:
        return t.interval if t.interval is not None else self.defaults.interval

    def timeout_s(self, t: Target) -> float:
        return t.timeout if t.timeout is not None else self.defaults.timeout

    def fall(self, t: Target) -> int:
        return t.fall if t.fall is not None else self.defaults.fall

    def rise(self, t: Target) -> int:
        return t.rise if t.rise is not None else self.defaults.rise

    def policy(self, s: Service) -> Policy:
        """The service's traffic-engineering settings with `defaults` filled in."""
        d = self.defaults
        ramp = s.ramp or d.ramp
        neighbors = self.neighbors_of(s)
        mode = ramp.mode
        if mode is RampMode.AUTO:
            if len(neighbors) >= 2:
                mode = RampMode.NEIGHBORS
            elif len(s.prefixes) >= 2:
                mode = RampMode.PREFIXES
            else:
                mode = RampMode.PREPEND
        return Policy(
            local_as=self.bgp.local_as,
            med_hold_s=_pick(s.med_hold, d.med_hold),
            min_update_interval_s=_pick(s.min_update_interval, d.min_update_interval),
            capacity_penalty=_pick(s.capacity_penalty, d.capacity_penalty),
            load_tiers=tuple((t.load, t.med) for t in _pick(s.load_tiers, d.load_tiers)),
            drain_grace_s=_pick(s.drain_grace, d.drain_grace),
            damping=s.damping or d.damping,
            stages=ramp.stages,
            stage_hold_s=ramp.stage_hold,
            ramp_mode=mode,
        )


T = TypeVar("T")


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class Policy:
    """Resolved traffic-engineering settings of one service, as the core consumes them."""

    local_as: int
    med_hold_s: float
    min_update_interval_s: float
    capacity_penalty: int
    load_tiers: tuple[tuple[float, int], ...]
    drain_grace_s: float
    damping: Damping
    stages: tuple[int, ...]
    stage_hold_s: float
    ramp_mode: RampMode


def _loc(loc: tuple[int | str, ...], data: Any) -> str:
    """A key path like services[web].targets[edge1].timeout, naming list items by their name."""
    out: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            name = (
                node[part].get("name")
                if isinstance(node, list) and part < len(node) and isinstance(node[part], Mapping)
                else None
            )
            out[-1:] = [f"{out[-1] if out else ''}[{name if name else part}]"]
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            out.append(str(part))
            node = node.get(part) if isinstance(node, Mapping) else None
    return ".".join(out) or "(top level)"


def format_errors(exc: ValidationError, data: Any) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _loc(loc, data)
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # cross-field checks name their own key path
            lines.append(msg)
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        bad = err.get("input")
        shown = "" if isinstance(bad, Mapping | list) or bad is None else f" (got {bad!r})"
        if shown and repr(bad) in msg:
            shown = ""
        lines.append(f"{path}: {msg}{shown}")
    return lines


def load_config(path: Path | str) -> AgentConfig:
    """Read, validate and freeze a config file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the config file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), [f"the top level must be a mapping, got {type(data).__name__}"]
        )
    try:
        return AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(str(path), format_errors(exc, data)) from None
