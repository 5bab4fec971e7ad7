"""The control endpoint's HTTP API: health, status and metrics reads, and operator intents.

Every mutating route is one row of `INTENTS` (method, path, body model, controller call); the
shared handler authenticates, checks the service name against the snapshot, reads and validates
the body, and only then calls the controller. A new intent is a new row, not a new handler.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Protocol, TypeAlias, TypeVar

from aiohttp import web
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from anycast_agent.config import parse_duration
from anycast_agent.control import metrics
from anycast_agent.core.intents import POP, Drain, MedOverride, RampAction
from anycast_agent.core.snapshot import RouteSnapshot, ServiceSnapshot, Snapshot, TargetSnapshot
from anycast_agent.errors import Conflict, UnknownService
from anycast_agent.model import MED_MAX, RouteAttrs

log = logging.getLogger("anycast_agent.control")

MAX_BODY = 16 * 1024
STALE_AFTER_S = 10.0
REALM = "anycast-agent"

JSON: TypeAlias = dict[str, Any]


class Controller(Protocol):
    """What the agent offers the control endpoint: a snapshot to read and intents to submit.

    Methods raise UnknownService (404) or Conflict (409); `service=None` means the whole PoP.
    """

    def snapshot(self) -> Snapshot: ...

    async def drain(
        self, service: str | None, *, reason: str, author: str, expires_in_s: float | None
    ) -> None: ...

    async def undrain(self, service: str | None, *, author: str) -> None: ...

    async def set_med(
        self, service: str, med: int, *, reason: str, author: str, expires_in_s: float | None
    ) -> None: ...

    async def clear_med(self, service: str, *, author: str) -> None: ...

    async def ramp(self, service: str, action: RampAction, *, author: str) -> None: ...

    async def reload(self) -> list[str]:
        """[] when the new config was applied; else its errors, and nothing changed."""
        ...


@dataclass(frozen=True, slots=True)
class Settings:
    token: str | None
    max_body: int
    stale_after_s: float
    monotonic: Callable[[], float]
    wall_clock: Callable[[], float]


CONTROLLER = web.AppKey("controller", Controller)
SETTINGS = web.AppKey("settings", Settings)


class ApiError(Exception):
    """A refused request, rendered as `{"error": ..., "detail": ...}` with its status."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(
    status: int, error: str, detail: object = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


# --- request bodies -------------------------------------------------------------------------


def _text(max_len: int) -> Callable[[object], object]:
    def check(value: object) -> object:
        if isinstance(value, str):
            # Reasons and authors land in the state file, logs and status tables: one line,
            # no control characters (the same rule ExaBGP's healthcheck applies).
            if not value.isprintable():
                raise ValueError("must contain printable characters only (no newline/control)")
            if not value.strip():
                raise ValueError("must not be blank")
            if len(value) > max_len:
                raise ValueError(f"must be at most {max_len} characters, got {len(value)}")
        return value

    return check


def _expiry(value: object) -> object:
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be a positive duration like 30m or 45s, got {value!r}")
    return seconds


Reason: TypeAlias = Annotated[str, Field(strict=True), BeforeValidator(_text(200))]
Author: TypeAlias = Annotated[str, Field(strict=True), BeforeValidator(_text(64))]
Expiry: TypeAlias = Annotated[float | None, BeforeValidator(_expiry)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    author: Author | None = None


class DrainBody(Body):
    reason: Reason
    expires_in: Expiry = None


class MedBody(Body):
    med: Annotated[int, Field(strict=True, ge=0, le=MED_MAX)]
    reason: Reason
    expires_in: Expiry = None


class RampBody(Body):
    action: RampAction

    @field_validator("action", mode="before")
    @classmethod
    def _known(cls, v: object) -> object:
        if v not in {a.value for a in RampAction}:
            raise ValueError(f"must be one of {', '.join(a.value for a in RampAction)}")
        return v


class ReloadBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


B = TypeVar("B", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Call(Generic[B]):
    """One validated intent request, ready for the controller."""

    service: str | None  # None: the whole PoP (or no service at all, as for reload)
    body: B
    author: str


@dataclass(frozen=True, slots=True)
class Intent(Generic[B]):
    """A mutating route: its body model and the controller call it makes."""

    name: str
    method: str
    path: str
    body: type[B]
    apply: Callable[[Controller, Call[B]], Awaitable[JSON]]

    @property
    def scoped(self) -> bool:
        return "{name}" in self.path


async def _drain(c: Controller, call: Call[DrainBody]) -> JSON:
    b = call.body
    await c.drain(call.service, reason=b.reason, author=call.author, expires_in_s=b.expires_in)
    return {"drained": True}


async def _undrain(c: Controller, call: Call[Body]) -> JSON:
    await c.undrain(call.service, author=call.author)
    return {"drained": False}


async def _set_med(c: Controller, call: Call[MedBody]) -> JSON:
    assert call.service is not None
    b = call.body
    await c.set_med(
        call.service, b.med, reason=b.reason, author=call.author, expires_in_s=b.expires_in
    )
    return {"med_override": b.med}


async def _clear_med(c: Controller, call: Call[Body]) -> JSON:
    assert call.service is not None
    await c.clear_med(call.service, author=call.author)
    return {"med_override": None}


async def _ramp(c: Controller, call: Call[RampBody]) -> JSON:
    assert call.service is not None
    await c.ramp(call.service, call.body.action, author=call.author)
    return {"ramp": call.body.action.value}


async def _reload(c: Controller, call: Call[ReloadBody]) -> JSON:
    errors = await c.reload()
    if errors:
        raise ApiError(422, "the new configuration is invalid; nothing changed", errors)
    return {"applied": True}


SERVICE = "/v1/services/{name}"

INTENTS: tuple[Intent[Any], ...] = (
    Intent("drain", "POST", SERVICE + "/drain", DrainBody, _drain),
    Intent("undrain", "POST", SERVICE + "/undrain", Body, _undrain),
    Intent("set-med", "PUT", SERVICE + "/med", MedBody, _set_med),
    Intent("clear-med", "DELETE", SERVICE + "/med", Body, _clear_med),
    Intent("ramp", "POST", SERVICE + "/ramp", RampBody, _ramp),
    Intent("drain-pop", "POST", "/v1/drain", DrainBody, _drain),
    Intent("undrain-pop", "POST", "/v1/undrain", Body, _undrain),
    Intent("reload", "POST", "/v1/reload", ReloadBody, _reload),
)


# --- the shared intent handler ----------------------------------------------------------------


def _author(request: web.Request) -> str:
    """Authenticate a mutating request; return the default author (the caller's identity)."""
    token = request.app[SETTINGS].token
    if token is None:
        # No token file: config only allows this on loopback or a unix socket, where reaching
        # the endpoint already means being on the router (socket mode 0660 for unix:).
        return "local"
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not header:
        raise ApiError(
            401,
            "authorization required",
            "send Authorization: Bearer <token>",
            {"WWW-Authenticate": f'Bearer realm="{REALM}"'},
        )
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    ):
        raise ApiError(
            401,
            "invalid token",
            None,
            {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'},
        )
    return "token"


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
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None, limit) from None
    if len(raw) > limit:
        raise _too_large(len(raw), limit)
    data: object = {}
    if raw.strip():
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "the body is not valid JSON", str(exc)) from None
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


def intent_handler(intent: Intent[B]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        author = _author(request)
        service = _service(request) if intent.scoped else None
        body = await _body(request, intent.body)
        given, reason = getattr(body, "author", None), getattr(body, "reason", None)
        call = Call(service, body, given if isinstance(given, str) else author)
        log.info(
            "control: %s%s by %s (authenticated as %s)%s",
            intent.name,
            f" {service}" if service else "",
            call.author,
            author,
            f": {reason}" if isinstance(reason, str) else "",
        )
        result = await intent.apply(request.app[CONTROLLER], call)
        return web.json_response({"ok": True, "action": intent.name, "service": service, **result})

    handle.__name__ = f"intent_{intent.name.replace('-', '_')}"
    return handle


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


async def status(request: web.Request) -> web.Response:
    # As for /metrics: the snapshot on the loop, the encoding (tens of ms at 2000 targets) in a
    # thread, so a status poll does not stall the probes.
    snap = request.app[CONTROLLER].snapshot()
    wall_now = request.app[SETTINGS].wall_clock()
    body = await asyncio.to_thread(lambda: json.dumps(status_json(snap, wall_now)).encode())
    return web.Response(body=body, content_type="application/json")


async def metrics_handler(request: web.Request) -> web.Response:
    # The snapshot is taken on the loop (it reads the agent's live state); the rendering, the
    # expensive part, runs in a thread on that immutable snapshot.
    snap = request.app[CONTROLLER].snapshot()
    accept = request.headers.get("Accept", "")
    monotonic = request.app[SETTINGS].monotonic
    body, content_type = await asyncio.to_thread(
        metrics.render_snapshot, snap, accept, monotonic=monotonic
    )
    return web.Response(body=body, headers={"Content-Type": content_type})


READS: tuple[tuple[str, Callable[[web.Request], Awaitable[web.Response]]], ...] = (
    ("/healthz", healthz),
    ("/readyz", readyz),
    ("/v1/status", status),
    ("/metrics", metrics_handler),
)


# --- status JSON ------------------------------------------------------------------------------


def _attrs(a: RouteAttrs | None) -> JSON | None:
    if a is None:
        return None
    return {"med": a.med, "as_path": list(a.as_path), "communities": list(a.communities)}


def _expiry_json(expires: float | None, wall_now: float) -> JSON:
    return {
        "expires": expires,
        "expires_in_s": None if expires is None else round(max(0.0, expires - wall_now), 3),
    }


def _drain_json(d: Drain | None, wall_now: float) -> JSON | None:
    if d is None:
        return None
    return {
        "scope": "pop" if d.service == POP else "service",
        "reason": d.reason,
        "author": d.author,
        "since": d.since,
        **_expiry_json(d.expires, wall_now),
    }


def _override_json(m: MedOverride | None, wall_now: float) -> JSON | None:
    if m is None:
        return None
    return {
        "med": m.med,
        "reason": m.reason,
        "author": m.author,
        "since": m.since,
        **_expiry_json(m.expires, wall_now),
    }


def _target_json(t: TargetSnapshot) -> JSON:
    return {
        "name": t.name,
        "kind": t.kind,
        "state": t.state.value,
        "last_ok": t.last_ok,
        "last_reason": t.last_reason,
        "last_latency_s": t.last_latency_s,
        "load": t.load,
        "probes_ok": t.probes_ok,
        "probes_failed": t.probes_failed,
        "skipped_slots": t.skipped_slots,
        "transitions": t.transitions,
    }


def _route_json(r: RouteSnapshot, neighbors: Mapping[str, str]) -> JSON:
    return {
        "prefix": r.prefix,
        "neighbor": r.neighbor,
        "neighbor_state": neighbors.get(r.neighbor, "unknown"),
        "wanted": _attrs(r.wanted),
        "accepted": _attrs(r.accepted),
        "in_sync": r.wanted == r.accepted,
    }


def _service_json(s: ServiceSnapshot, snap: Snapshot, wall_now: float) -> JSON:
    return {
        "name": s.name,
        "state": s.status,
        "reason": s.reason,
        "healthy": s.healthy,
        "total": s.total,
        "quorum": s.quorum,
        "med": s.med,
        "stage": s.stage,
        "ramp_mode": s.ramp_mode,
        "ramp_held": s.ramp_held,
        "suppressed": s.suppressed,
        "damping_penalty": s.penalty,
        "transitions": s.transitions,
        "drain": _drain_json(s.drain, wall_now),
        "med_override": _override_json(s.med_override, wall_now),
        "targets": [_target_json(t) for t in s.targets],
        "routes": [_route_json(r, snap.neighbors) for r in s.routes],
    }


def status_json(snap: Snapshot, wall_now: float) -> JSON:
    """The whole snapshot as JSON: what `anycast-agent status` shows."""
    return {
        "pop": snap.pop,
        "version": snap.version,
        "started_at": snap.started_at,
        "ready": snap.ready,
        "channel_up": snap.channel_up,
        "neighbors": [{"address": a, "state": s} for a, s in sorted(snap.neighbors.items())],
        "commands_sent": snap.commands_sent,
        "commands_acked": dict(sorted(snap.commands_acked.items())),
        "starts": snap.starts,
        "last_good_fallback": snap.last_good_fallback,
        "state_unreadable": snap.state_unreadable,
        "services": [_service_json(s, snap, wall_now) for s in snap.services],
    }


# --- the application --------------------------------------------------------------------------


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every refusal as JSON: our own, the router's (404/405) and the controller's."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)
    except UnknownService as exc:
        return error_response(404, "unknown service", {"service": exc.name})
    except Conflict as exc:
        return error_response(409, "conflict", str(exc))
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
    intents: Sequence[Intent[Any]] = INTENTS,
) -> web.Application:
    """The control endpoint over `controller`; mutations need `Bearer token` unless it is None."""
    if token is not None and not token:
        raise ValueError("an empty token would let any Bearer header through; pass None")
    app = web.Application(middlewares=[_errors], client_max_size=max_body)
    app[CONTROLLER] = controller
    app[SETTINGS] = Settings(token, max_body, stale_after_s, monotonic, wall_clock)
    for path, handler in READS:
        app.router.add_route("GET", path, handler)
    for intent in intents:
        app.router.add_route(intent.method, intent.path, intent_handler(intent))
    return app
