"""Every route of the control API against a real server on port 0 and a recording controller."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from anycast_agent.control import api, metrics, status
from anycast_agent.control.bodies import Body
from anycast_agent.control.rendering import Clocks
from anycast_agent.core.commands import Refusal, RefusalKind
from anycast_agent.core.intents import RampAction
from tests.unit.control.conftest import AUTH, JSON_TYPE, TOKEN, FakeController, make_snapshot

Client = TestClient[Any, Any]

MUTATIONS = [
    ("POST", "/v1/services/web/drain", {"reason": "maintenance"}),
    ("POST", "/v1/services/web/undrain", None),
    ("PUT", "/v1/services/web/med", {"med": 500, "reason": "shift"}),
    ("DELETE", "/v1/services/web/med", None),
    ("POST", "/v1/services/web/ramp", {"action": "hold"}),
    ("POST", "/v1/drain", {"reason": "maintenance"}),
    ("POST", "/v1/undrain", None),
    ("POST", "/v1/reload", None),
    ("POST", "/v1/state/reset", {"reason": "both copies corrupt"}),
]


async def _json(resp: Any) -> Any:
    assert resp.content_type == "application/json"
    return await resp.json()


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LXRva2Vu"}],
    ids=["none", "wrong", "basic"],
)
async def test_mutations_need_the_token(
    client: Client, controller: FakeController, method: str, path: str, body: Any, headers: Any
) -> None:
    resp = await client.request(method, path, json=body, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="anycast-agent"')
    assert (await _json(resp))["error"] in {"authorization required", "invalid token"}
    assert controller.calls == []


async def test_unknown_service_with_a_bad_token_is_401_not_404(client: Client) -> None:
    resp = await client.post("/v1/services/nope/drain", json={"reason": "x"})
    assert resp.status == 401


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS)
async def test_no_token_configured_allows_local_mutations(
    make_client: Any, method: str, path: str, body: Any
) -> None:
    ctl = FakeController()
    client = await make_client(ctl, token=None)
    resp = await client.request(method, path, json=body, headers=JSON_TYPE)
    assert resp.status == 200, await resp.text()
    _, _, kw = ctl.calls[0]
    assert kw.get("author", "local") == "local"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/status", "/metrics"])
async def test_reads_need_no_token(client: Client, path: str) -> None:
    assert (await client.get(path)).status == 200


# --- intents reach the controller with the right values ---------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "call"),
    [
        (
            "POST",
            "/v1/services/web/drain",
            {"reason": "maintenance", "expires_in": "30m"},
            (
                "drain",
                ("web",),
                {"reason": "maintenance", "author": "token", "expires_in_s": 1800.0},
            ),
        ),
        (
            "POST",
            "/v1/services/web/drain",
            {"reason": "Wartung für Kunde", "author": "alice", "expires_in": 45},
            (
                "drain",
                ("web",),
                {"reason": "Wartung für Kunde", "author": "alice", "expires_in_s": 45.0},
            ),
        ),
        ("POST", "/v1/services/dns/undrain", None, ("undrain", ("dns",), {"author": "token"})),
        (
            "PUT",
            "/v1/services/web/med",
            {"med": 4294967295, "reason": "shift", "expires_in": "2h"},
            (
                "set_med",
                ("web", 4294967295),
                {"reason": "shift", "author": "token", "expires_in_s": 7200.0},
            ),
        ),
        (
            "PUT",
            "/v1/services/web/med",
            {"med": 0, "reason": "attract"},
            ("set_med", ("web", 0), {"reason": "attract", "author": "token", "expires_in_s": None}),
        ),
        ("DELETE", "/v1/services/web/med", None, ("clear_med", ("web",), {"author": "token"})),
        *[
            (
                "POST",
                "/v1/services/web/ramp",
                {"action": a.value},
                ("ramp", ("web", a), {"author": "token"}),
            )
            for a in RampAction
        ],
        (
            "POST",
            "/v1/drain",
            {"reason": "PoP maintenance", "author": "noc"},
            (
                "drain",
                (None,),
                {"reason": "PoP maintenance", "author": "noc", "expires_in_s": None},
            ),
        ),
        ("POST", "/v1/undrain", {}, ("undrain", (None,), {"author": "token"})),
        ("POST", "/v1/reload", None, ("reload", (), {})),
        (
            "POST",
            "/v1/state/reset",
            {"reason": "disk fault"},
            ("state_reset", (), {"reason": "disk fault", "author": "token"}),
        ),
    ],
)
async def test_intents_call_the_controller(
    client: Client, controller: FakeController, method: str, path: str, body: Any, call: Any
) -> None:
    resp = await client.request(method, path, json=body, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert (await _json(resp))["ok"] is True
    assert controller.calls == [call]


async def test_reload_applied_and_refused(client: Client, controller: FakeController) -> None:
    resp = await client.post("/v1/reload", headers=AUTH)
    assert (resp.status, (await _json(resp))["applied"]) == (200, True)
    controller.reload_errors = ["services[web].med: must be ≤ 4294967295 (got -1)"]
    resp = await client.post("/v1/reload", headers=AUTH)
    assert resp.status == 422
    assert (await _json(resp))["detail"] == controller.reload_errors


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        (Refusal(RefusalKind.CONFLICT, "web is not ramping"), 409),
        (Refusal(RefusalKind.UNKNOWN_SERVICE, "no service named 'web'"), 404),
        (Refusal(RefusalKind.NOT_PERSISTED, "cannot persist the change: disk full"), 503),
        (Refusal(RefusalKind.BUSY, "another operator change is being saved"), 503),
    ],
)
async def test_core_refusals_map_to_statuses(
    client: Client, controller: FakeController, refusal: Refusal, status: int
) -> None:
    controller.fail = refusal
    resp = await client.post("/v1/services/web/ramp", json={"action": "advance"}, headers=AUTH)
    assert resp.status == status
    body = await _json(resp)
    assert body["error"] == refusal.kind.value
    if status != 404:
        assert body["detail"] == refusal.message


# --- refusals that never reach the controller -------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "nope",
        "web%0A",
        "we%0Ab",
        "a%2Fb",
        "web%2F..%2Fdns",
        "%C3%A9dge",
        "w%C3%A9b",
        "web%00",
        "%FF",
    ],
)
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("POST", "drain", {"reason": "x"}),
        ("POST", "undrain", None),
        ("PUT", "med", {"med": 5, "reason": "x"}),
        ("DELETE", "med", None),
        ("POST", "ramp", {"action": "hold"}),
    ],
)
async def test_bad_or_unknown_service_names_never_reach_the_controller(
    client: Client, controller: FakeController, name: str, method: str, suffix: str, body: Any
) -> None:
    url = URL(f"/v1/services/{name}/{suffix}", encoded=True)
    resp = await client.request(method, url, json=body, headers=AUTH)
    assert resp.status in {404, 422}
    assert "error" in await _json(resp)
    assert controller.calls == []


async def test_unknown_service_is_404_naming_it(client: Client) -> None:
    resp = await client.post("/v1/services/nope/drain", json={"reason": "x"}, headers=AUTH)
    assert resp.status == 404
    assert await _json(resp) == {"error": "unknown service", "detail": {"service": "nope"}}


@pytest.mark.parametrize(
    ("body", "field", "shown"),
    [
        ({"med": -1, "reason": "x"}, "med", "-1"),
        ({"med": 4294967296, "reason": "x"}, "med", "4294967296"),
        ({"med": "100", "reason": "x"}, "med", "'100'"),
        ({"med": 1.5, "reason": "x"}, "med", "1.5"),
        ({"med": True, "reason": "x"}, "med", "True"),
        ({"med": 5}, "reason", None),
        ({"med": 5, "reason": ""}, "reason", "''"),
        ({"med": 5, "reason": "   "}, "reason", "'   '"),
        ({"med": 5, "reason": "a\nb"}, "reason", "'a\\nb'"),
        ({"med": 5, "reason": "x" * 201}, "reason", None),
        ({"med": 5, "reason": "x", "expires_in": "soon"}, "expires_in", "'soon'"),
        ({"med": 5, "reason": "x", "expires_in": -5}, "expires_in", "-5"),
        ({"med": 5, "reason": "x", "expires_in": 0}, "expires_in", "0"),
        ({"med": 5, "reason": "x", "expires_in": "800h"}, "expires_in", "'800h'"),  # > 30 d
        ({"med": 5, "reason": "x", "author": "eve\r\n"}, "author", None),
        ({"med": 5, "reason": "x", "color": "red"}, "color", "'red'"),
    ],
)
async def test_invalid_med_bodies_are_422_naming_field_and_value(
    client: Client, controller: FakeController, body: Any, field: str, shown: str | None
) -> None:
    resp = await client.put("/v1/services/web/med", json=body, headers=AUTH)
    assert resp.status == 422
    data = await _json(resp)
    assert data["error"].startswith(f"{field}: ")
    if shown is not None:
        assert f"(got {shown})" in data["error"]
    assert data["detail"][0]["field"] == field
    assert controller.calls == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/services/web/drain", {}, "reason"),
        ("/v1/drain", {"reason": "x\x1b[31m"}, "reason"),
        ("/v1/services/web/ramp", {"action": "pause"}, "action"),
        ("/v1/services/web/ramp", {}, "action"),
        ("/v1/reload", {"force": True}, "force"),
    ],
)
async def test_invalid_bodies_are_422(
    client: Client, controller: FakeController, path: str, body: Any, field: str
) -> None:
    resp = await client.post(path, json=body, headers=AUTH)
    assert resp.status == 422
    assert (await _json(resp))["error"].startswith(f"{field}: ")
    assert controller.calls == []


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b"\xff\xfe", b'{"reason": "x",}', b"[" * 5000],  # the last: make fuzz
)
async def test_bad_json_is_400(client: Client, controller: FakeController, raw: bytes) -> None:
    resp = await client.post("/v1/services/web/drain", data=raw, headers=AUTH)
    assert resp.status == 400
    assert (await _json(resp))["error"] == "the body is not valid JSON"
    assert controller.calls == []


@pytest.mark.parametrize("raw", [b"[]", b'"drain"', b"42", b"null"])
async def test_non_object_json_is_400(
    client: Client, controller: FakeController, raw: bytes
) -> None:
    resp = await client.post("/v1/drain", data=raw, headers=AUTH)
    assert resp.status == 400
    assert controller.calls == []


async def test_oversized_body_is_413(client: Client, controller: FakeController) -> None:
    body = b'{"reason": "' + b"x" * (17 * 1024) + b'"}'
    resp = await client.post("/v1/services/web/drain", data=body, headers=AUTH)
    assert resp.status == 413
    assert (await _json(resp))["detail"]["limit"] == 16 * 1024
    assert controller.calls == []


async def test_oversized_chunked_body_is_413(client: Client, controller: FakeController) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 1024

    resp = await client.post("/v1/drain", data=chunks(), headers=AUTH)
    assert resp.status == 413
    assert controller.calls == []


async def test_max_body_is_configurable(make_client: Any) -> None:
    ctl = FakeController()
    client = await make_client(ctl, max_body=64)
    resp = await client.post("/v1/drain", json={"reason": "x" * 100}, headers=AUTH)
    assert resp.status == 413


async def test_unknown_route_and_method_are_json(client: Client) -> None:
    resp = await client.get("/v2/nothing")
    assert resp.status == 404
    assert (await _json(resp))["error"] == "not found"
    resp = await client.get("/v1/reload")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert (await _json(resp))["error"] == "method not allowed"


# --- health, readiness, status ----------------------------------------------------------------


@pytest.mark.parametrize(("age_s", "status"), [(0.0, 200), (9.5, 200), (10.5, 503), (3600, 503)])
async def test_healthz_follows_last_progress(
    client: Client, controller: FakeController, age_s: float, status: int
) -> None:
    controller.snap = make_snapshot(last_progress=time.monotonic() - age_s)
    resp = await client.get("/healthz")
    assert resp.status == status
    assert (await _json(resp))["status"] == ("ok" if status == 200 else "stale")


async def test_healthz_staleness_is_configurable(make_client: Any) -> None:
    now = [100.0]
    ctl = FakeController(snap=make_snapshot(last_progress=99.0))
    client = await make_client(ctl, stale_after_s=0.5, monotonic=lambda: now[0])
    assert (await client.get("/healthz")).status == 503
    now[0] = 99.3
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize(
    ("ready", "channel_up", "status"),
    [(True, True, 200), (False, True, 503), (True, False, 503), (False, False, 503)],
)
async def test_readyz(
    client: Client, controller: FakeController, ready: bool, channel_up: bool, status: int
) -> None:
    controller.snap = make_snapshot(ready=ready, channel_up=channel_up)
    resp = await client.get("/readyz")
    assert resp.status == status
    assert await _json(resp) == {"ready": ready, "channel_up": channel_up}


async def test_status_shows_the_whole_snapshot(make_client: Any) -> None:
    ctl = FakeController()
    client = await make_client(ctl, wall_clock=lambda: 2000.0)
    data = await _json(await client.get("/v1/status"))
    assert data["pop"] == "ams1"
    assert data["version"] == "0.1.0"
    assert data["channel_up"] is True
    assert data["neighbors"] == [
        {"address": "198.51.100.1", "state": "established"},
        {"address": "198.51.100.3", "state": "down"},
    ]
    assert data["commands_acked"] == {"done": 10, "error": 1, "timeout": 1}
    web, dns = data["services"]
    assert (web["name"], web["state"], web["stage"], web["med"]) == ("web", "up", 100, 150)
    assert (web["healthy"], web["total"]) == (2, 3)
    assert web["med_override"] == {
        "med": 150,
        "reason": "traffic shift",
        "author": "alice",
        "since": 1000.0,
        "expires": 5000.0,
        "expires_in_s": 3000.0,
    }
    assert web["drain"] is None
    assert web["targets"][2] == {
        "name": "edge3",
        "kind": "http",
        "state": "unhealthy",
        "last_ok": False,
        "last_reason": "HTTP 500",
        "last_latency_s": None,
        "load": None,
        "probes_ok": 40,
        "probes_failed": 2,
        "skipped_slots": 1,
        "transitions": 3,
        "checker_fault": None,
        "probe_bugs": 0,
    }
    assert web["routes"][0] == {
        "prefix": "192.0.2.10/32",
        "neighbor": "198.51.100.1",
        "neighbor_state": "established",
        "wanted": {"med": 150, "as_path": [], "communities": []},
        "accepted": {"med": 150, "as_path": [], "communities": []},
        "in_sync": True,
    }
    assert web["routes"][1]["accepted"] is None
    assert web["routes"][1]["wanted"] == {
        "med": 150,
        "as_path": [65001],
        "communities": ["65001:100"],
    }
    assert web["routes"][1]["in_sync"] is False
    assert dns["drain"] == {
        "scope": "pop",
        "reason": "maintenance",
        "author": "bob",
        "since": 1000.0,
        "override_fleet": False,
        "expires": None,
        "expires_in_s": None,
    }
    assert (dns["suppressed"], dns["ramp_held"], dns["damping_penalty"]) == (True, True, 1500.5)


async def test_metrics_route_serves_the_exposition(client: Client) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "anycast_agent_service_up" in await resp.text()
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).endswith("# EOF\n")


async def test_status_of_one_service(make_client: Any) -> None:
    client = await make_client(FakeController(), monotonic=lambda: 1.0, wall_clock=lambda: 2.0)
    whole = await _json(await client.get("/v1/status"))
    data = await _json(await client.get("/v1/status", params={"service": "dns"}))
    assert [s["name"] for s in data["services"]] == ["dns"]
    assert data["services"][0] == whole["services"][1]
    assert {k: v for k, v in data.items() if k != "services"} == {
        k: v for k, v in whole.items() if k != "services"
    }


async def test_status_of_an_unknown_service_is_404_naming_it(client: Client) -> None:
    resp = await client.get("/v1/status", params={"service": "nope"})
    assert resp.status == 404
    assert await _json(resp) == {"error": "unknown service", "detail": {"service": "nope"}}


@pytest.mark.parametrize(
    ("query", "error", "detail"),
    [
        ("service=", "not a service name", {"service": ""}),
        ("service=web%0A", "not a service name", {"service": "web\n"}),
        ("service=../web", "not a service name", {"service": "../web"}),
        ("service=web&service=dns", "give service once", {"service": ["web", "dns"]}),
        (
            "servcie=web",
            "unknown query parameter",
            {"parameters": ["servcie"], "known": ["service"]},
        ),
    ],
)
async def test_a_bad_status_query_is_400(
    client: Client, query: str, error: str, detail: Any
) -> None:
    resp = await client.get(URL(f"/v1/status?{query}", encoded=True))
    assert resp.status == 400
    assert await _json(resp) == {"error": error, "detail": detail}


async def test_the_time_left_and_the_contact_age_are_read_per_request(make_client: Any) -> None:
    mono, wall = [100.0], [2000.0]
    ctl = FakeController(snap=make_snapshot(fleet_last_contact=99.5))
    client = await make_client(ctl, monotonic=lambda: mono[0], wall_clock=lambda: wall[0])
    first = await _json(await client.get("/v1/status"))
    mono[0], wall[0] = 110.0, 2500.0
    second = await _json(await client.get("/v1/status"))
    assert (first["fleet"]["contact_age_s"], second["fleet"]["contact_age_s"]) == (0.5, 10.5)
    left = [d["services"][0]["med_override"]["expires_in_s"] for d in (first, second)]
    assert left == [3000.0, 2500.0]


async def test_a_snapshot_is_rendered_once_however_often_it_is_read(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller = FakeController()
    client = await make_client(controller, monotonic=lambda: 100.0, wall_clock=lambda: 2000.0)
    rendered: list[tuple[str, object]] = []
    for module in (status, metrics):
        real = module.render

        def counting(
            snap: Any, variant: Any, rows: Any, real: Any = real, name: str = module.__name__
        ) -> Any:
            rendered.append((name.rsplit(".", 1)[1], variant))
            return real(snap, variant, rows)

        monkeypatch.setattr(module, "render", counting)
    bodies = [await (await client.get("/v1/status")).read() for _ in range(3)]
    bodies += [await (await client.get("/metrics")).read() for _ in range(3)]
    assert len(set(bodies[:3])) == 1
    assert rendered == [("status", None), ("metrics", metrics.Format.TEXT)]
    controller.snap = make_snapshot(starts=9)  # the agent's next snapshot: rendered anew
    assert b'"starts":9' in await (await client.get("/v1/status")).read()
    assert b"anycast_agent_starts_total 9.0" in await (await client.get("/metrics")).read()
    assert len(rendered) == 4


async def test_the_next_snapshot_reads_as_if_rendered_from_nothing(make_client: Any) -> None:
    """What was written for a target is kept for the next snapshot's rendering (the core
    shares unchanged rows): a target whose row changed shows its new values, and the bodies
    are byte for byte a rendering of the new snapshot alone."""
    controller = FakeController()
    client = await make_client(controller, monotonic=lambda: 100.0, wall_clock=lambda: 2000.0)
    om = {"Accept": "application/openmetrics-text; version=1.0.0"}
    reads = (("/v1/status", {}), ("/v1/status?service=web", {}), ("/metrics", {}), ("/metrics", om))
    for path, headers in reads:
        assert (await client.get(path, headers=headers)).status == 200
    web, dns = controller.snap.services
    edge1 = web.targets[0]._replace(probes_ok=41, last_latency_s=0.5)  # probed again
    web = replace(web, targets=(edge1, *web.targets[1:]))
    controller.snap = replace(controller.snap, services=(web, dns))
    clocks = Clocks(100.0, 2000.0)
    fresh = [
        status.render(controller.snap).fill(clocks),
        status.render(controller.snap, "web").fill(clocks),
        metrics.render(controller.snap, metrics.Format.TEXT).fill(clocks),
        metrics.render(controller.snap, metrics.Format.OPENMETRICS).fill(clocks),
    ]
    bodies = [await (await client.get(path, headers=headers)).read() for path, headers in reads]
    assert bodies == fresh
    assert json.loads(bodies[0])["services"][0]["targets"][0]["probes_ok"] == 41
    line = 'anycast_agent_target_probes_total{result="ok",service="web",target="edge1"} 41.0'
    assert line in bodies[2].decode().splitlines()


async def test_a_new_intent_is_one_table_row() -> None:
    seen: list[tuple[str | None, str]] = []

    async def ping(_: Any, call: api.Call[Body]) -> dict[str, Any]:
        seen.append((call.service, call.author))
        return {"pong": True}

    extra = api.Mutation("ping", "POST", "/v1/services/{name}/ping", Body, ping)
    app = api.make_app(FakeController(), TOKEN, mutations=(*api.MUTATIONS, extra))
    async with TestClient(TestServer(app, port=0)) as client:
        assert (await client.post("/v1/services/web/ping")).status == 401
        assert (await client.post("/v1/services/nope/ping", headers=AUTH)).status == 404
        resp = await client.post("/v1/services/web/ping", json={"author": "ops"}, headers=AUTH)
        assert (await _json(resp))["pong"] is True
    assert seen == [("web", "ops")]


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty token"):
        api.make_app(FakeController(), "")


async def test_a_state_reset_needs_a_reason(client: Client, controller: FakeController) -> None:
    resp = await client.post("/v1/state/reset", json={}, headers=AUTH)
    assert resp.status == 422
    assert (await _json(resp))["detail"][0]["field"] == "reason"
    assert controller.calls == []


# --- a browser page can never reach it (R34) ------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "http://evil.example"}, 403),  # a cross-site fetch or form
        ({"Host": "evil.example"}, 403),  # DNS rebinding: the page's name, our address
        ({"Host": "evil.example:9179", "Origin": "http://evil.example:9179"}, 403),
        ({"Content-Type": "text/plain"}, 415),  # a "simple" request needs no preflight
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),  # a form POST
    ],
)
async def test_browser_requests_are_refused_even_with_the_token(
    client: Client, controller: FakeController, headers: dict[str, str], status: int
) -> None:
    sent = {"Authorization": AUTH["Authorization"], "Content-Type": "application/json", **headers}
    resp = await client.post("/v1/drain", data=b'{"reason": "x"}', headers=sent)
    assert resp.status == status, await resp.text()
    assert not any(h.lower().startswith("access-control-") for h in resp.headers)
    assert controller.calls == []


async def test_reads_from_a_browser_page_are_refused_too(client: Client) -> None:
    resp = await client.get("/v1/status", headers={"Origin": "http://evil.example"})
    assert resp.status == 403
    resp = await client.get("/metrics", headers={"Host": "attacker.example"})
    assert resp.status == 403
    assert (await client.get("/metrics", headers={"Host": "localhost:9179"})).status == 200
    assert (await client.get("/metrics", headers={"Host": "[::1]:9179"})).status == 200


async def test_a_unix_socket_checks_no_host(make_client: Any) -> None:
    ctl = FakeController()
    client = await make_client(ctl, allowed_hosts=None)
    assert (await client.get("/v1/status", headers={"Host": "agent"})).status == 200
    resp = await client.get("/v1/status", headers={"Host": "agent", "Origin": "http://a.example"})
    assert resp.status == 403


async def test_a_storm_of_changes_is_answered_429_with_retry_after(
    make_client: Any, controller: FakeController
) -> None:
    # R35: valid, authenticated calls, as fast as a script can send them.
    now = [1000.0]
    client = await make_client(controller, monotonic=lambda: now[0])
    statuses = []
    for _ in range(30):
        resp = await client.post("/v1/services/web/undrain", json={}, headers=AUTH)
        statuses.append(resp.status)
    assert statuses.count(200) == 20 and statuses[20:] == [429] * 10
    assert resp.headers["Retry-After"] == "1"
    assert len(controller.calls) == 20
    now[0] += 1.0  # five more a second
    assert [(await client.post("/v1/undrain", json={}, headers=AUTH)).status for _ in range(6)] == [
        200
    ] * 5 + [429]
