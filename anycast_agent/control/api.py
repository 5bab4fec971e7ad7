"""The control endpoint's HTTP API: health, status and metrics reads, and operator requests.

Every mutating route is one row of `MUTATIONS` (method, path, body model, what it submits); the
shared handler authenticates, checks the service name against the snapshot, reads and validates
the body, and only then submits. A new operator request is a new row, not a new handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from anycast_agent.config import NAME_RE
from anycast_agent.control import metrics, status
from anycast_agent.control.auth import (
    ApiError,
    TokenBucket,
    authenticate,
    error_response,
    refuse_browsers,
)
from anycast_agent.control.bodies import (
    Body,
    DrainBody,
    MedBody,
    RampBody,
    ReloadBody,
    ResetBody,
    UndrainBody,
)
from anycast_agent.control.rendering import Clocks, Renderings
from anycast_agent.core.commands import Refusal, RefusalKind
from anycast_agent.core.events import (
    ClearMedRequest,
    DrainRequest,
    OperatorRequest,
    RampRequest,
    SetMedRequest,
    StateResetRequest,
    UndrainRequest,
)
from anycast_agent.core.snapshot import Snapshot

log = logging.getLogger("anycast_agent.control")

MAX_BODY = 16 * 1024
# A body must arrive within this long of its head: a slow sender never holds a change open.
BODY_TIMEOUT_S = 5.0
# Operator changes: a burst of 20, then 5 a second (a script draining many services is fine;
# a storm is answered 429 with Retry-After).
CHANGES_BURST = 20
CHANGES_PER_S = 5.0
STALE_AFTER_S = 10.0

JSON: TypeAlias = dict[str, Any]


class Controller(Protocol):
    """What the agent offers the control endpoint: a snapshot to read, operator requests to
    submit (answered by None, accepted, or the core's refusal) and reloads."""

    def snapshot(self) -> Snapshot:
        """The PoP now: the same object for as long as nothing changed (renderings of status
        and metrics are kept per snapshot object)."""
        ...

    async def submit(self, request: OperatorRequest) -> Refusal | None: ...

    async def reload(self, allow_withdraw: bool = False) -> list[str]:
        """[] when the new config was applied; else its errors, and nothing changed."""
        ...


@dataclass(frozen=True, slots=True)
class Settings:
    token: str | None
    max_body: int
    stale_after_s: float
    monotonic: Callable[[], float]
    wall_clock: Callable[[], float]
    allowed_hosts: frozenset[str] | None  # None: a unix socket (no Host to check)
    changes: TokenBucket
    body_timeout_s: float


CONTROLLER = web.AppKey("controller", Controller)
SETTINGS = web.AppKey("settings", Settings)
RENDERINGS = web.AppKey("renderings", Renderings)
STATUS_ROWS = web.AppKey("status_rows", status.TargetRows)
METRICS_ROWS = web.AppKey("metrics_rows", metrics.TargetRows)


B = TypeVar("B", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Call(Generic[B]):
    """One validated intent request, ready for the controller."""

    service: str | None  # None: the whole PoP (or no service at all, as for reload)
    body: B
    author: str


@dataclass(frozen=True, slots=True)
class Mutation(Generic[B]):
    """A mutating route: its body model, and what it asks of the controller."""

    name: str
    method: str
    path: str
    body: type[B]
    apply: Callable[[Controller, Call[B]], Awaitable[JSON]]

    @property
    def scoped(self) -> bool:
        return "{name}" in self.path


# How each refusal of the core reads over HTTP.
REFUSALS: dict[RefusalKind, tuple[int, str]] = {
    RefusalKind.UNKNOWN_SERVICE: (404, "unknown service"),
    RefusalKind.CONFLICT: (409, "conflict"),
    RefusalKind.NOT_PERSISTED: (503, "not persisted"),
    RefusalKind.BUSY: (503, "busy"),
}


async def _submit(c: Controller, request: OperatorRequest, result: JSON) -> JSON:
    refusal = await c.submit(request)
    if refusal is None:
        return result
    status, error = REFUSALS[refusal.kind]
    unknown = refusal.kind is RefusalKind.UNKNOWN_SERVICE
    raise ApiError(status, error, {"service": request.service} if unknown else refusal.message)


async def _drain(c: Controller, call: Call[DrainBody]) -> JSON:
    b = call.body
    request = DrainRequest(
        call.service, b.reason, call.author, b.expires_in, b.on_stop, b.neighbor, b.override_fleet
    )
    return await _submit(c, request, {"drained": True})


async def _undrain(c: Controller, call: Call[UndrainBody]) -> JSON:
    request = UndrainRequest(call.service, call.author, call.body.neighbor)
    return await _submit(c, request, {"drained": False})


async def _set_med(c: Controller, call: Call[MedBody]) -> JSON:
    assert call.service is not None
    b = call.body
    request = SetMedRequest(call.service, b.med, b.reason, call.author, b.expires_in)
    return await _submit(c, request, {"med_override": b.med})


async def _clear_med(c: Controller, call: Call[Body]) -> JSON:
    assert call.service is not None
    return await _submit(c, ClearMedRequest(call.service, call.author), {"med_override": None})


async def _ramp(c: Controller, call: Call[RampBody]) -> JSON:
    assert call.service is not None
    action = call.body.action
    return await _submit(c, RampRequest(call.service, action, call.author), {"ramp": action.value})


async def _state_reset(c: Controller, call: Call[ResetBody]) -> JSON:
    return await _submit(c, StateResetRequest(call.body.reason, call.author), {"reset": True})


async def _reload(c: Controller, call: Call[ReloadBody]) -> JSON:
    errors = await c.reload(call.body.allow_withdraw)
    if errors:
        raise ApiError(422, "the new configuration is invalid; nothing changed", errors)
    return {"applied": True}


SERVICE = "/v1/services/{name}"

MUTATIONS: tuple[Mutation[Any], ...] = (
    Mutation("drain", "POST", SERVICE + "/drain", DrainBody, _drain),
    Mutation("undrain", "POST", SERVICE + "/undrain", UndrainBody, _undrain),
    Mutation("set-med", "PUT", SERVICE + "/med", MedBody, _set_med),
    Mutation("clear-med", "DELETE", SERVICE + "/med", Body, _clear_med),
    Mutation("ramp", "POST", SERVICE + "/ramp", RampBody, _ramp),
    Mutation("drain-pop", "POST", "/v1/drain", DrainBody, _drain),
    Mutation("undrain-pop", "POST", "/v1/undrain", UndrainBody, _undrain),
    Mutation("reload", "POST", "/v1/reload", ReloadBody, _reload),
    Mutation("state-reset", "POST", "/v1/state/reset", ResetBody, _state_reset),
)


# --- the shared intent handler ----------------------------------------------------------------


def _service(request: web.Request) -> str:
    name = request.match_info["name"]
    # Only configured names pass, so a name with a newline, a slash or non-ASCII never reaches
    # the controller, and no request ever creates a service.
    if request.app[CONTROLLER].snapshot().service(name) is None:
        raise ApiError(404, "unknown service", {"service": name})
    return name


async def _body(request: web.Request, model: type[B]) -> B:
    limit = request.app[SETTINGS].max_body
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request.content_length, limit)
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None, limit) from None
    except TimeoutError:
        timeout = request.app[SETTINGS].body_timeout_s
        raise ApiError(408, f"the body did not arrive within {timeout:g}s", None) from None
    if len(raw) > limit:
        raise _too_large(len(raw), limit)
    data: object = {}
    if raw.strip():
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "the body is not valid JSON", str(exc)) from None
        except RecursionError:  # found by `make fuzz`: 5,000 `[` ended as a bare 500
            raise ApiError(400, "the body is not valid JSON", "nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", {"got": type(data).__name__})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors(include_url=False)]
        raise ApiError(422, "; ".join(p["message"] for p in problems), problems) from None


def _too_large(size: int | None, limit: int) -> ApiError:
    return ApiError(413, f"the body exceeds {limit} bytes", {"size": size, "limit": limit})


def _problem(err: Mapping[str, Any]) -> JSON:
    field = ".".join(str(p) for p in err["loc"]) or "(body)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    bad = err.get("input")
    shown = isinstance(bad, str | int | float | bool) and err["type"] != "missing"
    message = f"{field}: {msg}" + (f" (got {bad!r})" if shown else "")
    return {"field": field, "message": message, "value": bad if shown else None}


def mutation_handler(intent: Mutation[B]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        settings = request.app[SETTINGS]
        author = authenticate(settings.token, request.headers.get("Authorization", ""))
        settings.changes.take()
        if request.content_type != "application/json":
            # A browser's "simple" request (text/plain, a form) can carry no JSON type.
            raise ApiError(415, "mutations take Content-Type: application/json",
                           {"content_type": request.content_type})  # fmt: skip
        service = _service(request) if intent.scoped else None
        body = await _body(request, intent.body)
        given, reason = getattr(body, "author", None), getattr(body, "reason", None)
        call = Call(service, body, given if isinstance(given, str) else author)
        log.info(
            "control: %s%s by %s (authenticated as %s, peer %s)%s",
            intent.name,
            f" {service}" if service else "",
            call.author,
            author,
            peer(request),
            f": {reason}" if isinstance(reason, str) else "",
        )
        result = await intent.apply(request.app[CONTROLLER], call)
        return web.json_response({"ok": True, "action": intent.name, "service": service, **result})

    handle.__name__ = f"intent_{intent.name.replace('-', '_')}"
    return handle


def peer(request: web.Request) -> str:
    """Who is on the other end, for the audit line: the address, or on a unix socket the
    process, user and group the kernel vouches for (SO_PEERCRED)."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return "unknown"
    if sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        return f"pid {pid} uid {uid} gid {gid}"
    return str(request.remote)


# --- reads ------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    snap = request.app[CONTROLLER].snapshot()
    age = settings.monotonic() - snap.last_progress
    ok = age <= settings.stale_after_s
    body = {
        "status": "ok" if ok else "stale",
        "progress_age_s": round(age, 3),
        "stale_after_s": settings.stale_after_s,
    }
    return web.json_response(body, status=200 if ok else 503)


async def readyz(request: web.Request) -> web.Response:
    snap = request.app[CONTROLLER].snapshot()
    ok = snap.ready and snap.channel_up
    body = {"ready": snap.ready, "channel_up": snap.channel_up}
    return web.json_response(body, status=200 if ok else 503)


def _clocks(request: web.Request) -> Clocks:
    settings = request.app[SETTINGS]
    return Clocks(settings.monotonic(), settings.wall_clock())


def _service_filter(request: web.Request) -> str | None:
    """`?service=NAME`: one service's status (None: every service). Anything else in the query
    is refused, so a misspelt parameter never reads as the whole PoP."""
    query = request.query
    if unknown := sorted(set(query) - {"service"}):
        raise ApiError(
            400, "unknown query parameter", {"parameters": unknown, "known": ["service"]}
        )
    names = query.getall("service", [])
    if not names:
        return None
    if len(names) > 1:
        raise ApiError(400, "give service once", {"service": names})
    if not NAME_RE.fullmatch(names[0]):
        raise ApiError(400, "not a service name", {"service": names[0]})
    return names[0]


async def status_handler(request: web.Request) -> web.Response:
    service = _service_filter(request)
    controller = request.app[CONTROLLER]
    if service is not None and controller.snapshot().service(service) is None:
        raise ApiError(404, "unknown service", {"service": service})
    rows = request.app[STATUS_ROWS]
    encoded = await request.app[RENDERINGS].get(
        controller.snapshot, ("status", service), lambda snap: status.render(snap, service, rows)
    )
    return web.Response(body=encoded.fill(_clocks(request)), content_type="application/json")


async def metrics_handler(request: web.Request) -> web.Response:
    fmt = metrics.negotiate(request.headers.get("Accept", ""))
    # Scrapes that arrive while one is being rendered share it: its snapshot is younger than
    # the rendering takes, and at 2,000 targets every probe result makes a new snapshot.
    rows = request.app[METRICS_ROWS]
    encoded = await request.app[RENDERINGS].get(
        request.app[CONTROLLER].snapshot,
        ("metrics", fmt),
        lambda snap: metrics.render(snap, fmt, rows),
        join=True,
    )
    return web.Response(body=encoded.fill(_clocks(request)), headers={"Content-Type": fmt.value})


READS: tuple[tuple[str, Callable[[web.Request], Awaitable[web.Response]]], ...] = (
    ("/healthz", healthz),
    ("/readyz", readyz),
    ("/v1/status", status_handler),
    ("/metrics", metrics_handler),
)


# --- the application --------------------------------------------------------------------------


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every refusal as JSON: our own (the core's included) and the router's (404/405)."""
    try:
        refuse_browsers(request.headers, request.app[SETTINGS].allowed_hosts)
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, exc.reason.lower(), None, headers)


def make_app(
    controller: Controller,
    token: str | None,
    *,
    max_body: int = MAX_BODY,
    stale_after_s: float = STALE_AFTER_S,
    monotonic: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    mutations: Sequence[Mutation[Any]] = MUTATIONS,
    allowed_hosts: frozenset[str] | None = frozenset({"localhost", "127.0.0.1", "::1"}),
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> web.Application:
    """The control endpoint over `controller`; mutations need `Bearer token` unless it is None."""
    if token is not None and not token:
        raise ValueError("an empty token would let any Bearer header through; pass None")
    app = web.Application(middlewares=[_errors], client_max_size=max_body)
    app[CONTROLLER] = controller
    changes = TokenBucket(CHANGES_PER_S, CHANGES_BURST, monotonic)
    settings = Settings(
        token,
        max_body,
        stale_after_s,
        monotonic,
        wall_clock,
        allowed_hosts,
        changes,
        body_timeout_s,
    )
    app[SETTINGS] = settings
    app[RENDERINGS] = Renderings()
    app[STATUS_ROWS] = status.target_rows()
    app[METRICS_ROWS] = metrics.target_rows()
    for path, handler in READS:
        app.router.add_route("GET", path, handler)
    for mutation in mutations:
        app.router.add_route(mutation.method, mutation.path, mutation_handler(mutation))
    return app
