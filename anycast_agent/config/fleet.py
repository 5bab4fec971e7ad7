"""The `fleet:` key: the etcd cluster the PoPs coordinate through (DESIGN §3.7, FLEET.md).

Absent, the agent stands alone (STANDALONE, the default). The keys under `ctl/` in etcd
(policy, budget, freeze) override `min_pops` and `budget` for the whole fleet at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from anycast_agent.config.types import Duration, Name, Strict


class EtcdTls(Strict):
    ca_file: Path
    cert_file: Path | None = None  # a client certificate, for transport
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> EtcdTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class EtcdAuth(Strict):
    user: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    password_file: Path  # read at start; never logged


class Budget(Strict):
    """At most `slots` health withdraws in the fleet per `window` (FLEET.md §3.6)."""

    slots: Annotated[int, Field(ge=1, le=100)] = 1
    window: Annotated[Duration, Field(ge=2.0)] = 300.0


class EtcdAccess(Strict):
    """Which etcd, under which prefix, and as whom: the agent's `fleet:` and the operator's
    credential file (`anycast-agent fleet --etcd FILE`) alike."""

    endpoints: Annotated[tuple[str, ...], Field(min_length=1)]
    prefix: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._/-]*/$")] = "/anycast/v1/"
    timeout: Annotated[Duration, Field(gt=0.0, le=10.0)] = 2.0  # every etcd call's deadline
    tls: EtcdTls | None = None
    auth: EtcdAuth | None = None

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for url in v:
            parts = urlsplit(url)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path not in ("", "/")
            ):
                raise ValueError(f"expected http(s)://HOST:PORT, got {url!r}")
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise ValueError(f"bad port in {url!r}") from None
        if len(set(v)) != len(v):
            raise ValueError("an endpoint is listed twice")
        return tuple(u.rstrip("/") for u in v)

    @model_validator(mode="after")
    def _tls(self) -> EtcdAccess:
        https = {urlsplit(u).scheme == "https" for u in self.endpoints}
        if len(https) > 1:
            raise ValueError("endpoints mix http and https")
        if (self.tls is not None) != (True in https):
            raise ValueError("https endpoints need tls: {ca_file: ...}, and tls needs https")
        return self


class Fleet(EtcdAccess):
    region: Name = "default"
    # The K of a service without `ctl/policy/<svc>`: a withdraw that would leave fewer other
    # PoPs announcing it is refused (the routes stay de-preferred). Capped by etcd's
    # --max-txn-ops (128 by default).
    min_pops: Annotated[int, Field(ge=0, le=120)] = 2
    budget: Budget = Budget()
    lease_ttl: Annotated[Duration, Field(ge=2.0, le=300.0)] = 9.0
    stale_after: Annotated[Duration, Field(gt=0.0)] = 5.0  # DEGRADED with no answer this long

    @model_validator(mode="after")
    def _timers(self) -> Fleet:
        if self.timeout >= self.lease_ttl / 3:
            raise ValueError(
                f"timeout {self.timeout:g}s must be under lease_ttl/3 "
                f"({self.lease_ttl / 3:g}s): keepalives go every lease_ttl/3"
            )
        return self
