"""docs/openapi.yaml and the aiohttp router describe the same routes and status codes."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from anycast_agent.control.api import make_app
from anycast_agent.core.commands import Refusal, RefusalKind
from tests.unit.control.conftest import (
    AUTH,
    OPENAPI,
    FakeController,
    documented_statuses,
    make_snapshot,
)


def routes() -> set[tuple[str, str]]:
    app = make_app(FakeController(), "t")
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }


def test_every_route_is_documented_and_vice_versa() -> None:
    assert routes() == set(documented_statuses())


def test_the_document_is_openapi_31() -> None:
    doc = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for (method, path), codes in documented_statuses().items():
        mutating = method != "GET"
        op = doc["paths"][path][method.lower()]
        assert bool(op.get("security")) == mutating, (method, path)
        if mutating:
            assert {200, 400, 401, 413, 422} <= codes, (method, path)
        if "{name}" in path:
            assert 404 in codes, (method, path)


Case = tuple[str, str, Any, dict[str, str], int]

# One request per (route, status) the API can answer, each checked live and against the doc.
CASES: list[Case] = [
    ("GET", "/healthz", None, {}, 200),
    ("GET", "/readyz", None, {}, 200),
    ("GET", "/v1/status", None, {}, 200),
    ("GET", "/v1/status?service=web", None, {}, 200),
    ("GET", "/v1/status?service=nope", None, {}, 404),
    ("GET", "/v1/status?service=no%20pe", None, {}, 400),
    ("GET", "/metrics", None, {}, 200),
    ("POST", "/v1/services/web/drain", {"reason": "x"}, AUTH, 200),
    ("POST", "/v1/services/web/drain", {"reason": "x"}, {}, 401),
    ("POST", "/v1/services/nope/drain", {"reason": "x"}, AUTH, 404),
    ("POST", "/v1/services/web/drain", {}, AUTH, 422),
    ("POST", "/v1/services/web/drain", b"{", AUTH, 400),
    ("POST", "/v1/services/web/drain", b"x" * 20000, AUTH, 413),
    ("POST", "/v1/services/web/undrain", None, AUTH, 200),
    ("POST", "/v1/services/nope/undrain", None, AUTH, 404),
    ("PUT", "/v1/services/web/med", {"med": 1, "reason": "x"}, AUTH, 200),
    ("PUT", "/v1/services/web/med", {"med": -1, "reason": "x"}, AUTH, 422),
    ("PUT", "/v1/services/web/med", {"med": 1, "reason": "x"}, {}, 401),
    ("DELETE", "/v1/services/web/med", None, AUTH, 200),
    ("DELETE", "/v1/services/nope/med", None, AUTH, 404),
    ("POST", "/v1/services/web/ramp", {"action": "restart"}, AUTH, 200),
    ("POST", "/v1/services/web/ramp", {"action": "x"}, AUTH, 422),
    ("POST", "/v1/drain", {"reason": "x"}, AUTH, 200),
    ("POST", "/v1/drain", {"reason": "x"}, {}, 401),
    ("POST", "/v1/undrain", None, AUTH, 200),
    ("POST", "/v1/reload", None, AUTH, 200),
    ("POST", "/v1/reload", None, {}, 401),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), CASES)
async def test_observed_statuses_are_documented(
    make_client: Any, method: str, path: str, body: Any, headers: dict[str, str], status: int
) -> None:
    client: TestClient[Any, Any] = await make_client(FakeController())
    kw = {"data": body} if isinstance(body, bytes) else {"json": body}
    resp = await client.request(method, path, headers=headers, **kw)
    assert resp.status == status
    assert status in _documented(method, path)


@pytest.mark.parametrize(
    ("ctl", "method", "path", "body", "status"),
    [
        (
            FakeController(snap=make_snapshot(last_progress=time.monotonic() - 60)),
            "GET",
            "/healthz",
            None,
            503,
        ),
        (FakeController(snap=make_snapshot(ready=False)), "GET", "/readyz", None, 503),
        (
            FakeController(fail=Refusal(RefusalKind.CONFLICT, "busy")),
            "POST",
            "/v1/services/web/undrain",
            None,
            409,
        ),
        (
            FakeController(fail=Refusal(RefusalKind.CONFLICT, "busy")),
            "POST",
            "/v1/drain",
            {"reason": "x"},
            409,
        ),
        (FakeController(reload_errors=["bad"]), "POST", "/v1/reload", None, 422),
    ],
)
async def test_state_dependent_statuses_are_documented(
    make_client: Any, ctl: FakeController, method: str, path: str, body: Any, status: int
) -> None:
    client: TestClient[Any, Any] = await make_client(ctl)
    resp = await client.request(method, path, json=body, headers=AUTH)
    assert resp.status == status
    assert status in _documented(method, path)


def _documented(method: str, path: str) -> set[int]:
    documented = documented_statuses()
    template = next(t for m, t in documented if m == method and _matches(t, path))
    return documented[(method, template)]


def _matches(template: str, path: str) -> bool:
    t, p = template.split("/"), path.partition("?")[0].split("/")
    return len(t) == len(p) and all(a == b or a.startswith("{") for a, b in zip(t, p, strict=True))
