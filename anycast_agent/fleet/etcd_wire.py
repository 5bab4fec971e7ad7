"""The gateway's wire format: requests in proto3 JSON, answers read defensively and judged.

Internal to anycast_agent.fleet: the client turns the judgements into its public errors.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import NoReturn

import aiohttp

from anycast_agent.fleet.etcd_types import (
    Compare,
    CompareTarget,
    DeleteOp,
    EventKind,
    KeyValue,
    Lease,
    PutOp,
    RangeResult,
    TxnResult,
    WatchEvent,
)

# The gateway's JSON, as parsed; only this module and the client look inside it.
Json = Mapping[str, object]

# Mapped to gRPC metadata by the gateway: a member without a leader then refuses at once (503)
# and cancels its watches after ~3 election timeouts instead of going silent.
HASLEADER = {"Grpc-Metadata-hasleader": "true"}
# An expired or missing token (401 code 16, or 400 "user name is empty" without a token).
AUTH_REASONS = ("invalid auth token", "user name is empty")
# Refused before any proposal, so another member may take it.
NOT_PROPOSED = ("no leader", "too many requests")
# A watch stream is one JSON object per line; beyond this a member is misbehaving.
LINE_LIMIT = 64 * 1024 * 1024


class NotApplied(Exception):
    """The member did not take the request: another member may."""


class NoAnswer(Exception):
    """The request was sent and no usable answer came."""


class AuthExpired(Exception):
    """The token expired (or none was sent): authenticate and retry once."""

    def __init__(self, reason: str, url: str = "") -> None:
        super().__init__(reason)
        self.url = url


class Refused(Exception):
    """A definite answer that no other member would change."""


class BadAnswer(ValueError):
    """A gateway answer that does not have the shape of etcd's proto3 JSON."""


def _message(answer: object, text: str) -> str:
    if isinstance(answer, dict):
        for name in ("message", "error"):
            if isinstance(answer.get(name), str) and answer[name]:
                return str(answer[name])
    return text.strip()[:200] or "empty answer"


def judge(status: int, text: str) -> Json:
    """The answer of a member, or the internal error that says what to do next."""
    try:
        answer = json.loads(text) if text.strip() else None
    except ValueError:
        answer = None
    if status == 200 and isinstance(answer, dict):
        if not isinstance(answer.get("error"), dict):
            return answer
        # A streaming call reports its error inside a 200: {"error": {"http_code": 503, ...}}.
        answer = answer["error"]
        code = answer.get("http_code")
        status = code if isinstance(code, int) and code >= 400 else 500
    refuse(status, _message(answer, text))


def refuse(status: int, message: str) -> NoReturn:
    if status == 401 or any(reason in message for reason in AUTH_REASONS):
        raise AuthExpired(message)
    if status in (429, 503) and any(reason in message for reason in NOT_PROPOSED):
        raise NotApplied(f"{status} {message}")
    if status >= 500 or status == 200:
        raise NoAnswer(f"{status} {message}")
    raise Refused(message)


def connect_reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate check failed: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.strerror:
        return f"cannot connect: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return "cannot connect within the deadline"
    return f"cannot connect: {exc!r}"


_COMPARE_FIELDS = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.VALUE: "value",
}
_EVENT_KINDS = frozenset(kind.value for kind in EventKind)


def b64(content: str | bytes) -> str:
    """A key or value as the gateway wants it; keys are UTF-8 (surrogates round-trip)."""
    raw = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content
    return base64.b64encode(raw).decode("ascii")


def prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with `prefix` (etcd's GetPrefixRangeEnd)."""
    raw = bytearray(prefix.encode("utf-8", "surrogateescape"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b64(b"\x00")  # every key
    raw[-1] += 1
    return b64(bytes(raw))


def compare_json(compare: Compare) -> dict[str, str]:
    target = _COMPARE_FIELDS[compare.target]
    if isinstance(compare.value, bytes) != (compare.target is CompareTarget.VALUE):
        raise TypeError(f"compare on {compare.target} of {compare.key!r}: bad {compare.value!r}")
    value = b64(compare.value) if isinstance(compare.value, bytes) else str(compare.value)
    return {
        "key": b64(compare.key),
        "target": compare.target.value,
        "result": compare.op.value,
        target: value,
    }


def op_json(op: PutOp | DeleteOp) -> dict[str, object]:
    if isinstance(op, PutOp):
        put = {"key": b64(op.key), "value": b64(op.value), "lease": str(op.lease)}
        return {"request_put": put}
    return {"request_delete_range": {"key": b64(op.key)}}


def field(obj: Json, name: str) -> Json:
    """A nested object; proto3 JSON omits an empty one."""
    value = obj.get(name, {})
    if not isinstance(value, Mapping):
        raise BadAnswer(f"{name!r} is not an object: {value!r}")
    return value


def number(obj: Json, name: str) -> int:
    """An integer field; int64 comes as a string, and a zero is omitted."""
    value = obj.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadAnswer(f"{name!r} is not an integer: {value!r}")
    try:
        return int(value)
    except ValueError:
        raise BadAnswer(f"{name!r} is not an integer: {value!r}") from None


def data(obj: Json, name: str) -> bytes:
    value = obj.get(name, "")
    if not isinstance(value, str):
        raise BadAnswer(f"{name!r} is not base64: {value!r}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise BadAnswer(f"{name!r} is not base64: {value!r}") from None


def revision(answer: Json) -> int:
    return number(field(answer, "header"), "revision")


def txn_result(answer: Json) -> TxnResult:
    return TxnResult(answer.get("succeeded") is True, revision(answer))


def lease(answer: Json) -> Lease:
    return Lease(number(answer, "ID"), number(answer, "TTL"))


def keepalive_ttl(answer: Json) -> int:
    """The TTL left; a lease that is gone comes back without one (zero)."""
    return number(field(answer, "result"), "TTL")


def key_value(obj: Json) -> KeyValue:
    return KeyValue(
        key=data(obj, "key").decode("utf-8", "surrogateescape"),
        value=data(obj, "value"),
        create_revision=number(obj, "create_revision"),
        mod_revision=number(obj, "mod_revision"),
        version=number(obj, "version"),
        lease=number(obj, "lease"),
    )


def range_result(answer: Json) -> RangeResult:
    kvs = answer.get("kvs", [])
    if not isinstance(kvs, list):
        raise BadAnswer(f"'kvs' is not a list: {kvs!r}")
    return RangeResult(revision(answer), tuple(key_value(as_object(kv)) for kv in kvs))


def watch_events(result: Json) -> list[WatchEvent]:
    events = result.get("events", [])
    if not isinstance(events, list):
        raise BadAnswer(f"'events' is not a list: {events!r}")
    batch = []
    for raw in events:
        event = as_object(raw)
        name = event.get("type", EventKind.PUT.value)  # proto3 JSON omits PUT, the zero value
        if not isinstance(name, str) or name not in _EVENT_KINDS:
            raise BadAnswer(f"unknown event type {name!r}")
        kind = EventKind(name)
        batch.append(WatchEvent(kind, key_value(field(event, "kv"))))
    return batch


def as_object(value: object) -> Json:
    if not isinstance(value, Mapping):
        raise BadAnswer(f"not an object: {value!r}")
    return value


class LineReader:
    """Newline-delimited JSON objects from a streaming gateway answer."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._buffer = bytearray()

    async def read(self) -> str:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > LINE_LIMIT:
                    raise NoAnswer(f"a streamed answer longer than {LINE_LIMIT} bytes")
                chunk = await self._response.content.readany()
                if not chunk and not self._buffer.strip():
                    raise NoAnswer(f"stream ended (HTTP {self._response.status})")
                self._buffer += chunk or b"\n"
                continue
            line = bytes(self._buffer[:end]).strip()
            del self._buffer[: end + 1]
            if line:
                return line.decode("utf-8", "replace")


def cancel_reason(result: Json) -> str:
    reason = result.get("cancel_reason")
    if isinstance(reason, str) and reason:
        return reason
    return f"compacted at {number(result, 'compact_revision')}"


def cancel_is_final(result: Json) -> bool:
    """A cancel that a new watch from the same revision would meet again."""
    reason = result.get("cancel_reason")
    if isinstance(reason, str) and reason:
        return "permission denied" in reason
    return number(result, "compact_revision") > 0
