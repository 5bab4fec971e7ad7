"""A fake controller that records calls, a realistic snapshot, and real servers on port 0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from anycast_agent.control.api import make_app
from anycast_agent.core import events as e
from anycast_agent.core.commands import Refusal
from anycast_agent.core.intents import POP, Drain, MedOverride
from anycast_agent.core.snapshot import RouteSnapshot, ServiceSnapshot, Snapshot, TargetSnapshot
from anycast_agent.core.spec import RampMode, TargetKind
from anycast_agent.core.traffic import Phase
from anycast_agent.model import (
    Announcing,
    CheckerFault,
    FleetMode,
    NeighborState,
    RefusalReason,
    RouteAttrs,
    TargetState,
)

TOKEN = "s3cret-token"
JSON_TYPE = {"Content-Type": "application/json"}  # what every mutation must say it sends
AUTH = {"Authorization": f"Bearer {TOKEN}", **JSON_TYPE}

# (method, route template, status) seen by any test's server, checked against the OpenAPI doc.
OBSERVED: set[tuple[str, str, int]] = set()
OPENAPI = Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml"


def target(name: str, state: TargetState = TargetState.HEALTHY, **kw: Any) -> TargetSnapshot:
    base: dict[str, Any] = {
        "name": name,
        "kind": TargetKind.HTTP,
        "state": state,
        "last_ok": state is TargetState.HEALTHY,
        "last_reason": "" if state is TargetState.HEALTHY else "HTTP 500",
        "last_latency_s": 0.012,
        "load": None,
        "probes_ok": 40,
        "probes_failed": 2,
        "skipped_slots": 1,
        "transitions": 3,
    }
    base.update(kw)
    return TargetSnapshot(**base)


def make_snapshot(**overrides: Any) -> Snapshot:
    web_svc = ServiceSnapshot(
        name="web",
        phase=Phase.UP,
        reason="2/3 healthy",
        healthy=2,
        total=3,
        quorum=1,
        med=150,
        stage=100,
        ramp_mode=RampMode.NEIGHBORS,
        ramp_held=False,
        suppressed=False,
        penalty=0.0,
        drain=None,
        med_override=MedOverride("web", 150, "traffic shift", "alice", 1000.0, 5000.0),
        transitions=4,
        targets=(
            target("edge1"),
            target("edge2", kind=TargetKind.TCP),
            target("edge3", TargetState.UNHEALTHY, last_latency_s=None),
        ),
        routes=(
            RouteSnapshot("192.0.2.10/32", "198.51.100.1", RouteAttrs(150), RouteAttrs(150)),
            RouteSnapshot(
                "192.0.2.10/32", "198.51.100.3", RouteAttrs(150, (65001,), ("65001:100",)), None
            ),
        ),
    )
    dns_svc = replace(
        web_svc,
        name="dns",
        phase=Phase.DOWN,
        reason="0/2 healthy",
        healthy=0,
        total=2,
        med=None,
        stage=0,
        ramp_held=True,
        suppressed=True,
        penalty=1500.5,
        drain=Drain(POP, "maintenance", "bob", 1000.0, None),
        med_override=None,
        targets=(target("ns1", TargetState.UNHEALTHY), target("ns2", TargetState.UNKNOWN)),
        routes=(RouteSnapshot("192.0.2.53/32", "198.51.100.1", None, None),),
        session_drains={"198.51.100.3": "transit work (bob)"},
        published=Announcing.DEPREFERRED,
        guard="withdraw refused: too few other PoPs announcing (1 other PoP(s) announce, "
        "min_pops is 2)",
    )
    base: dict[str, Any] = {
        "pop": "ams1",
        "version": "0.1.0",
        "started_at": 1000.0,
        "ready": True,
        "channel_up": True,
        "neighbors": {
            "198.51.100.1": NeighborState.ESTABLISHED,
            "198.51.100.3": NeighborState.DOWN,
        },
        "commands_sent": 12,
        "commands_acked": {e.AckResult.DONE: 10, e.AckResult.ERROR: 1, e.AckResult.TIMEOUT: 1},
        "starts": 2,
        "last_good_fallback": False,
        "state_unreadable": False,
        "last_progress": time.monotonic(),
        "services": (web_svc, dns_svc),
        "checker_faults": {**dict.fromkeys(CheckerFault, 0), CheckerFault.EMFILE: 1},
        "canary_up": True,
        "fd_limit": 1024,
        "fd_needed": 70,
        "fleet_mode": FleetMode.CONNECTED,
        "fleet_why": "lease, view and own states are fresh",
        "guard_refusals": {RefusalReason.TOO_FEW: 2},
        "fleet_slots_in_use": 1,
        "fleet_slots": 3,
        "fleet_last_contact": time.monotonic() - 0.5,
    }
    base.update(overrides)
    return Snapshot(**base)


@dataclass
class FakeController:
    """Records every request as a call tuple; `fail` is the refusal it answers with."""

    snap: Snapshot = field(default_factory=make_snapshot)
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    fail: Refusal | None = None  # the core's answer to every request (None: accepted)
    reload_errors: list[str] = field(default_factory=list)
    block: asyncio.Event | None = None  # every intent waits for it, when given
    called: asyncio.Event = field(default_factory=asyncio.Event)

    def snapshot(self) -> Snapshot:
        return self.snap

    async def _record(self, name: str, *args: Any, **kw: Any) -> None:
        self.calls.append((name, args, kw))
        self.called.set()
        if self.block is not None:
            await self.block.wait()

    async def submit(self, request: e.OperatorRequest) -> Refusal | None:
        match request:
            case e.DrainRequest(service=service, reason=reason, author=author):
                kw = {"reason": reason, "author": author, "expires_in_s": request.expires_in_s}
                if request.on_stop:
                    kw["on_stop"] = True
                if request.override_fleet:
                    kw["override_fleet"] = True
                await self._record("drain", service, **kw)
            case e.UndrainRequest(service=service, author=author):
                await self._record("undrain", service, author=author)
            case e.SetMedRequest(service=service, med=med, reason=reason, author=author):
                kw = {"reason": reason, "author": author, "expires_in_s": request.expires_in_s}
                await self._record("set_med", service, med, **kw)
            case e.ClearMedRequest(service=service, author=author):
                await self._record("clear_med", service, author=author)
            case e.RampRequest(service=service, action=action, author=author):
                await self._record("ramp", service, action, author=author)
            case e.StateResetRequest(reason=reason, author=author):
                await self._record("state_reset", reason=reason, author=author)
        return self.fail

    async def reload(self, allow_withdraw: bool = False) -> list[str]:
        await self._record("reload", **({"allow_withdraw": True} if allow_withdraw else {}))
        return self.reload_errors


async def _record(request: web.Request, response: web.StreamResponse) -> None:
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else "(no route)"
    OBSERVED.add((request.method, template, response.status))


def recording(app: web.Application) -> web.Application:
    app.on_response_prepare.append(_record)
    return app


@pytest.fixture
def controller() -> FakeController:
    return FakeController()


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(
        ctl: FakeController, token: str | None = TOKEN, **kw: Any
    ) -> TestClient[web.Request, web.Application]:
        client = TestClient(TestServer(recording(make_app(ctl, token, **kw)), port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def client(
    make_client: Callable[..., Any], controller: FakeController
) -> TestClient[web.Request, web.Application]:
    c: TestClient[web.Request, web.Application] = await make_client(controller)
    return c


def documented_statuses() -> dict[tuple[str, str], set[int]]:
    """(METHOD, path) → the status codes docs/openapi.yaml lists for it."""
    doc = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    return {
        (method.upper(), path): {int(code) for code in op["responses"]}
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in {"get", "put", "post", "delete", "patch", "head"}
    }


@pytest.fixture(scope="session", autouse=True)
def _observed_statuses_are_documented() -> Iterator[None]:
    """After the whole run: every status any test got from a route is in the OpenAPI doc."""
    yield
    documented = documented_statuses()
    undocumented = sorted(
        (method, path, status)
        for method, path, status in OBSERVED
        if path != "(no route)" and status not in documented.get((method, path), set())
    )
    assert not undocumented, f"statuses observed but not in docs/openapi.yaml: {undocumented}"
