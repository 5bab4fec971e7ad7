"""The etcd v3 client over the JSON gateway: deadlines, ordered failover, hasleader, auth.

FLEET.md §3.1. Each call has a deadline; members are tried in order from the last good one.
A write that was sent and got no answer is never retried elsewhere (EtcdOutcomeUnknown).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import aiohttp

from anycast_agent.fleet import etcd_wire as wire
from anycast_agent.fleet.etcd_types import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdRejected,
    EtcdUnavailable,
    EventKind,
    KeyValue,
    Lease,
    PutOp,
    RangeResult,
    TlsFiles,
    TxnResult,
    WatchEvent,
)
from anycast_agent.fleet.etcd_watch import Mirror
from anycast_agent.fleet.etcd_wire import Json, b64, prefix_end

__all__ = [
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteOp",
    "EtcdClient",
    "EtcdError",
    "EtcdOutcomeUnknown",
    "EtcdRejected",
    "EtcdUnavailable",
    "EventKind",
    "KeyValue",
    "Lease",
    "Mirror",
    "PutOp",
    "RangeResult",
    "TlsFiles",
    "TxnResult",
    "WatchEvent",
]

T = TypeVar("T")


def _ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file))
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise EtcdError(f"cannot load etcd TLS files {tls}: {exc}") from exc
    return context


class EtcdClient:
    """A client of one etcd cluster, for one event loop; `close()` it (or use `async with`)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 2.0,
        tls: TlsFiles | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        if (user is None) != (password is None):
            raise ValueError("etcd user and password go together")
        self._endpoints = tuple(url.rstrip("/") for url in endpoints)
        self._timeout_s = timeout_s
        # Without our own CA, https members are checked against the system store (and fail).
        self._ssl: ssl.SSLContext | bool = _ssl_context(tls) if tls is not None else True
        self._user = user
        self._password = password
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._good = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def current(self) -> str:
        """The member that answered last (the first one tried next)."""
        return self._endpoints[self._good]

    async def range(
        self, key: str, *, prefix: bool = False, serializable: bool = False
    ) -> RangeResult:
        body: dict[str, object] = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        if serializable:
            body["serializable"] = True
        # A serializable read is the stale view of degraded mode: hasleader would refuse it.
        return await self._call(
            "/v3/kv/range", body, f"range {key!r}", wire.range_result, hasleader=not serializable
        )

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        body = {"key": b64(key), "value": b64(value), "lease": str(lease)}
        return await self._call("/v3/kv/put", body, f"put {key!r}", wire.revision, write=True)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        what = f"delete {key!r}"
        return await self._call("/v3/kv/deleterange", body, what, wire.revision, write=True)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[PutOp | DeleteOp],
        failure: Sequence[PutOp | DeleteOp] = (),
    ) -> TxnResult:
        body = {
            "compare": [wire.compare_json(c) for c in compares],
            "success": [wire.op_json(op) for op in success],
            "failure": [wire.op_json(op) for op in failure],
        }
        what = f"txn comparing {compares[0].key!r} (+{len(compares) - 1})" if compares else "txn"
        return await self._call("/v3/kv/txn", body, what, wire.txn_result, write=True)

    async def grant(self, ttl_s: int) -> Lease:
        return await self._call("/v3/lease/grant", {"TTL": str(ttl_s)}, "grant", wire.lease)

    async def keepalive(self, lease_id: int, *, timeout_s: float | None = None) -> int:
        """The lease's remaining TTL in seconds; 0 when it is gone."""
        body = {"ID": str(lease_id)}
        what = f"keep lease {lease_id:x} alive"
        return await self._call(
            "/v3/lease/keepalive", body, what, wire.keepalive_ttl, timeout_s=timeout_s
        )

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._call(
                "/v3/lease/revoke", {"ID": str(lease_id)}, f"revoke {lease_id:x}", wire.revision
            )
        except EtcdRejected as exc:
            # A revoke retried on another member after a deadline may find it done already.
            if "lease not found" not in exc.reason:
                raise

    async def authenticate(self) -> None:
        """Get a fresh token for the configured user (nothing to do without one)."""
        if self._user is None or self._password is None:
            return
        body = {"name": self._user, "password": self._password}
        what = f"authenticate user {self._user!r}"
        try:
            answer = await self._failover("/v3/auth/authenticate", body, what, authorize=False)
        except wire.AuthExpired as exc:
            raise EtcdRejected(f"{exc.url} refused to {what}: {exc}", str(exc)) from None
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise EtcdRejected(f"{self.current} gave no token to {what}", "no token")
        self._token = token

    async def watch(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """One watch stream on one member, from `start_revision`, of every key under `prefix`.

        The first batch is empty: the member confirmed the watch. Any break raises EtcdError;
        a caller that stops early should close it (`contextlib.aclosing`).
        """
        body = {
            "create_request": {
                "key": b64(prefix),
                "range_end": prefix_end(prefix),
                "start_revision": str(start_revision),
            }
        }
        what = f"watch {prefix!r}"
        url, response, lines = await self._authorized(lambda: self._open_watch(body, what), what)
        try:
            yield []
            while True:
                result = wire.field(wire.judge(200, await lines.read()), "result")
                if result.get("canceled") is True:
                    reason = wire.cancel_reason(result)
                    message = f"{url}: {what} canceled: {reason}"
                    if wire.cancel_is_final(result):
                        raise EtcdRejected(message, reason)
                    raise EtcdUnavailable(message)
                yield _parsed(wire.watch_events, result, url)
        except (
            wire.NotApplied,
            wire.NoAnswer,
            wire.AuthExpired,
            wire.Refused,
            wire.BadAnswer,
        ) as exc:
            raise EtcdUnavailable(f"{url}: {what} broke: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise EtcdUnavailable(f"{url}: {what} broke: {exc!r}") from None
        finally:
            response.close()

    async def _open_watch(
        self, body: Json, what: str
    ) -> tuple[str, aiohttp.ClientResponse, wire.LineReader]:
        # No read deadline once the watch runs: a quiet prefix is normal, and hasleader makes
        # a member that lost its leader cancel the stream.
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout_s)
        failures = []
        for index in self._order():
            url = self._endpoints[index]
            try:
                async with asyncio.timeout(self._timeout_s):
                    response = await self._http().post(
                        url + "/v3/watch", json=body, headers=self._headers(), timeout=timeout
                    )
                    try:
                        lines = wire.LineReader(response)
                        created = wire.field(
                            wire.judge(response.status, await lines.read()), "result"
                        )
                        if created.get("canceled") is True:
                            wire.refuse(400, wire.cancel_reason(created))
                    except BaseException:
                        response.close()
                        raise
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                failures.append(f"{url}: {wire.connect_reason(exc)}")
            except (wire.NotApplied, wire.NoAnswer, wire.BadAnswer) as exc:
                failures.append(f"{url}: {exc}")
            except TimeoutError:
                failures.append(f"{url}: no answer within {self._timeout_s}s")
            except (aiohttp.ClientError, OSError) as exc:
                failures.append(f"{url}: the connection failed ({exc!r})")
            except wire.AuthExpired as exc:
                raise wire.AuthExpired(str(exc), url) from None
            except wire.Refused as exc:
                raise EtcdRejected(f"{url} rejected {what}: {exc}", str(exc)) from None
            else:
                self._good = index
                return url, response, lines
        raise EtcdUnavailable(f"no etcd member could {what}: " + "; ".join(failures))

    async def _call(
        self,
        path: str,
        body: Json,
        what: str,
        parse: Callable[[Json], T],
        *,
        write: bool = False,
        hasleader: bool = True,
        timeout_s: float | None = None,
    ) -> T:
        answer = await self._authorized(
            lambda: self._failover(
                path, body, what, write=write, hasleader=hasleader, timeout_s=timeout_s
            ),
            what,
        )
        return _parsed(parse, answer, self.current)

    async def _authorized(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Run `attempt`; on an expired token, authenticate again and retry it once."""
        if self._user is not None and self._token is None:
            await self._reauthenticate(None)
        stale = self._token
        try:
            return await attempt()
        except wire.AuthExpired as exc:
            if self._user is None:
                message = f"{exc.url} refused {what} (no etcd user configured): {exc}"
                raise EtcdRejected(message, str(exc)) from None
        await self._reauthenticate(stale)
        try:
            return await attempt()
        except wire.AuthExpired as exc:
            message = f"{exc.url} refused {what} with a fresh token of {self._user!r}: {exc}"
            raise EtcdRejected(message, str(exc)) from None

    async def _reauthenticate(self, stale: str | None) -> None:
        # Concurrent calls that all saw the token expire share one new token.
        async with self._auth_lock:
            if self._token == stale:
                await self.authenticate()

    async def _failover(
        self,
        path: str,
        body: Json,
        what: str,
        *,
        write: bool = False,
        hasleader: bool = True,
        timeout_s: float | None = None,
        authorize: bool = True,
    ) -> Json:
        deadline_s = timeout_s or self._timeout_s
        timeout = aiohttp.ClientTimeout(total=deadline_s)
        headers = self._headers(hasleader=hasleader, authorize=authorize)
        failures = []
        for index in self._order():
            url = self._endpoints[index]
            try:
                async with self._http().post(
                    url + path, json=body, headers=headers, timeout=timeout
                ) as response:
                    answer = wire.judge(response.status, await response.text())
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                failures.append(f"{url}: {wire.connect_reason(exc)}")
                continue
            except wire.NotApplied as exc:
                failures.append(f"{url}: {exc}")
                continue
            except (wire.NoAnswer, TimeoutError, aiohttp.ClientError, OSError) as exc:
                if isinstance(exc, wire.NoAnswer):
                    reason = f"got {exc}"
                elif isinstance(exc, TimeoutError):
                    reason = f"got no answer within {deadline_s}s"
                else:
                    reason = f"lost the connection ({exc!r})"
                if write:
                    raise EtcdOutcomeUnknown(
                        f"{url}: {what} was sent but {reason}: it may or may not have been applied"
                    ) from None
                failures.append(f"{url}: {reason}")
                continue
            except wire.AuthExpired as exc:
                raise wire.AuthExpired(str(exc), url) from None
            except wire.Refused as exc:
                raise EtcdRejected(f"{url} rejected {what}: {exc}", str(exc)) from None
            self._good = index
            return answer
        raise EtcdUnavailable(f"no etcd member could {what}: " + "; ".join(failures))

    def _order(self) -> list[int]:
        count = len(self._endpoints)
        return [(self._good + step) % count for step in range(count)]

    def _headers(self, *, hasleader: bool = True, authorize: bool = True) -> dict[str, str]:
        headers = dict(wire.HASLEADER) if hasleader else {}
        if authorize and self._token is not None:
            headers["Authorization"] = self._token
        return headers

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session


def _parsed(parse: Callable[[Json], T], answer: Json, url: str = "") -> T:
    try:
        return parse(answer)
    except wire.BadAnswer as exc:
        raise EtcdError(f"{url or 'etcd'}: unexpected answer: {exc}") from None
