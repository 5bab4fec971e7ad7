"""What a target checks, and how often: one model per probe kind (DESIGN §3.1)."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from anycast_agent.config.types import Address, Duration, Name, Strict
from anycast_agent.core.spec import TargetKind


class Timing(Strict):
    """Probe timing and state-machine thresholds; per target, falling back to `defaults`."""

    interval: Duration | None = None
    timeout: Duration | None = None
    fall: Annotated[int, Field(ge=1, le=100)] | None = None
    rise: Annotated[int, Field(ge=1, le=100)] | None = None


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

    @field_validator("host", "server_name")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        """Goes into the request's Host header or the TLS SNI: one token, never a line break
        (a CRLF here injected request headers), ASCII by IDNA."""
        if v is None:
            return v
        if not v or any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError(f"invalid host name {v!r}: no spaces or control characters")
        if not v.isascii():
            try:
                return v.encode("idna").decode("ascii")
            except UnicodeError:
                raise ValueError(f"invalid host name {v!r}: not a valid IDNA name") from None
        return v

    @field_validator("load_header")
    @classmethod
    def _header_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", v):
            raise ValueError(f"invalid header name {v!r}")
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

    @property
    def kind(self) -> TargetKind:
        return next(k for k in TargetKind if getattr(self, k.value) is not None)
