"""start_probe: a callback probe runs with no task of its own, yet a bug in the caller's
`on_result` still ends the task group with that error, and cancel() ends the probing."""

from __future__ import annotations

import asyncio

import pytest

from anycast_agent.config import HttpCheck
from anycast_agent.core.spec import TargetKind, TargetSpec
from anycast_agent.model import ProbeResult
from anycast_agent.probes import ProbeFactory
from anycast_agent.probes.runner import start_probe
from tests.unit.probes.conftest import HttpServer


class Bug(Exception):
    """Raised from on_result: a bug in the agent, which must end the task group."""


def http_target(server: HttpServer, *, keepalive: bool = False) -> TargetSpec:
    check = HttpCheck(url=f"{server.base}/ok", keepalive=keepalive)
    return TargetSpec("edge1", TargetKind.HTTP, 2, 3, 0.05, 0.04, check)


async def test_a_callback_probe_runs_without_a_task_of_its_own(
    http_server_v4: HttpServer,
) -> None:
    results: list[ProbeResult] = []
    three, more = asyncio.Event(), asyncio.Event()

    def on_result(result: ProbeResult) -> None:
        results.append(result)
        if len(results) > 3:
            more.set()
        elif len(results) == 3:
            three.set()

    async with ProbeFactory() as factory, asyncio.TaskGroup() as tg:
        before = asyncio.all_tasks()
        running = start_probe(
            factory,
            http_target(http_server_v4),
            "web/edge1",
            tg,
            on_result=on_result,
            on_skip=lambda n: None,
        )
        assert asyncio.all_tasks() == before
        await asyncio.wait_for(three.wait(), 5)
        running.cancel()
        seen = len(http_server_v4.seen.methods)
        with pytest.raises(TimeoutError):  # three intervals: nothing more starts
            await asyncio.wait_for(more.wait(), 0.15)
    assert len(results) == 3 and all(r.ok for r in results)
    assert len(http_server_v4.seen.methods) == seen


async def test_an_error_from_on_result_ends_the_task_group(http_server_v4: HttpServer) -> None:
    def on_result(result: ProbeResult) -> None:
        raise Bug("bug in on_result")

    async with ProbeFactory() as factory:
        with pytest.raises(ExceptionGroup) as caught:
            async with asyncio.TaskGroup() as tg:
                start_probe(
                    factory,
                    http_target(http_server_v4, keepalive=True),
                    "web/edge1",
                    tg,
                    on_result=on_result,
                    on_skip=lambda n: None,
                )
                await asyncio.sleep(5)  # cancelled by the group's failure long before
    assert caught.group_contains(Bug, match="bug in on_result")
