"""The records and errors of the etcd client (anycast_agent.fleet.etcd_http re-exports them)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class CompareTarget(enum.StrEnum):
    VERSION = "VERSION"
    CREATE = "CREATE"
    MOD = "MOD"
    VALUE = "VALUE"


class CompareOp(enum.StrEnum):
    EQUAL = "EQUAL"
    NOT_EQUAL = "NOT_EQUAL"
    GREATER = "GREATER"
    LESS = "LESS"


class EventKind(enum.StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    revision: int
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn condition: an int for VERSION/CREATE/MOD, bytes for VALUE."""

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes


@dataclass(frozen=True, slots=True)
class PutOp:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: str


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """For DELETE, `kv` has the key and mod_revision only (value b"")."""

    kind: EventKind
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl_s: int


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The CA that signs the members' certificates, and an optional client certificate."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class EtcdError(Exception):
    """Base of the client's errors; the message names the member URL and the reason."""


class EtcdUnavailable(EtcdError):
    """Every member failed before the request could have been applied."""


class EtcdOutcomeUnknown(EtcdError):
    """A write was sent and no answer came: it may or may not have been applied."""


class EtcdRejected(EtcdError):
    """A definite answer that retrying elsewhere will not change; `reason` is the server's."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message
