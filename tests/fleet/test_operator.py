"""The fleet CLI (`anycast-agent fleet ...`) against real etcd: what an operator sees and what
lands in etcd. Agents are simulated by writing their `pops/` and `svc/` keys from the test.

Each test writes under its own prefix on the session cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import yaml

from anycast_agent import cli
from anycast_agent.core.fleet_intents import ramp_share
from anycast_agent.fleet import operator_cli
from anycast_agent.fleet.etcd_http import Compare, DeleteOp, EtcdClient, PutOp, TxnResult
from anycast_agent.fleet.operator import Conflict, Operator
from tests.lab.etcd import EtcdCluster

Run = tuple[int, str, str]


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "tester")  # the author when --author is not given


@pytest.fixture
def prefix() -> str:
    return f"/anycast/op-{uuid.uuid4().hex[:8]}/"


def credentials(path: Path, endpoints: Sequence[str], prefix: str, **more: object) -> Path:
    path.write_text(yaml.safe_dump({"endpoints": list(endpoints), "prefix": prefix, **more}))
    return path


@pytest.fixture
def creds(tmp_path: Path, etcd_cluster: EtcdCluster, prefix: str) -> Path:
    return credentials(tmp_path / "operator.yaml", etcd_cluster.endpoints, prefix)


@pytest.fixture
async def etcd(etcd_cluster: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd_cluster.endpoints) as client:
        yield client


async def fleet(creds: Path, *argv: str) -> Run:
    """`anycast-agent fleet ARGV --etcd CREDS`: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    args = [*argv, "--etcd", str(creds)]
    code = await asyncio.to_thread(operator_cli.main, args, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def get(etcd: EtcdClient, prefix: str, key: str) -> dict[str, object] | None:
    found = await etcd.range(prefix + key)
    return json.loads(found.kvs[0].value) if found.kvs else None


async def register(
    etcd: EtcdClient, prefix: str, pop: str, region: str, applied: int = 0, **states: str
) -> None:
    """Write what an agent writes: `pops/<pop>` and a state per service."""
    about = {"region": region, "version": "0.1.0", "mode": "connected", "ctl_rev_applied": applied}
    await etcd.put(f"{prefix}pops/{pop}", json.dumps(about).encode())
    for service, state in states.items():
        await etcd.put(f"{prefix}svc/{service}/pop/{pop}", state.encode())


@contextlib.asynccontextmanager
async def agents(
    etcd: EtcdClient, prefix: str, pops: Sequence[str], region: str, lagging: Sequence[str] = ()
) -> AsyncIterator[None]:
    """Simulated agents: each acknowledges a changed `ctl/` view 0.3 s after seeing it, by
    writing the revision it read into `pops/<pop>`; the `lagging` ones never do."""

    async def run() -> None:
        seen: set[tuple[str, int]] | None = None
        while True:
            view = await etcd.range(f"{prefix}ctl/", prefix=True)
            now = {(kv.key, kv.mod_revision) for kv in view.kvs}
            if now != seen:
                if seen is not None:
                    await asyncio.sleep(0.3)
                seen = now
                for pop in pops:
                    if pop not in lagging:
                        await register(etcd, prefix, pop, region, view.revision)
            await asyncio.sleep(0.05)

    for pop in pops:
        await register(etcd, prefix, pop, region)
    task = asyncio.create_task(run(), name="simulated-agents")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_drain_writes_the_intent_undrain_deletes_it_and_meds_do_not_mix(
    creds: Path, etcd: EtcdClient, prefix: str
) -> None:
    before = time.time()
    code, out, err = await fleet(
        creds, "drain", "--region", "eu", "--reason", "dc move", "--author", "alice"
    )
    assert (code, err) == (0, "")
    assert "set ctl/intent/region/eu" in out
    value = await get(etcd, prefix, "ctl/intent/region/eu")
    assert value is not None
    assert {k: value[k] for k in ("action", "reason", "author")} == {
        "action": "drain",
        "reason": "dc move",
        "author": "alice",
    }
    assert isinstance(value["created"], float)
    assert before <= value["created"] <= time.time()

    code, _, err = await fleet(creds, "med", "--region", "eu", "500", "--reason", "x")
    assert code == 1
    assert "ctl/intent/region/eu holds a drain: undrain it first, or --replace" in err
    code, _, err = await fleet(creds, "unmed", "--region", "eu", "--reason", "x")
    assert code == 1
    assert "holds a drain, not a med" in err

    code, out, _ = await fleet(creds, "undrain", "--region", "eu", "--reason", "back")
    assert code == 0
    assert "deleted ctl/intent/region/eu" in out
    assert await get(etcd, prefix, "ctl/intent/region/eu") is None
    code, out, _ = await fleet(creds, "undrain", "--region", "eu", "--reason", "back")
    assert (code, out) == (0, "nothing to do: ctl/intent/region/eu does not exist\n")

    code, _, _ = await fleet(
        creds, "med", "--pop", "ams1", "900", "--reason", "busy", "--expires", "2h"
    )
    assert code == 0
    found = await etcd.range(f"{prefix}ctl/intent/pop/ams1")
    assert json.loads(found.kvs[0].value)["med"] == 900
    assert found.kvs[0].lease != 0  # the expiry


class RacingClient(EtcdClient):
    """Holds every txn until the other operator's txn is ready too: both read the same key."""

    def __init__(self, endpoints: Sequence[str], barrier: asyncio.Barrier) -> None:
        super().__init__(endpoints)
        self.barrier = barrier

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[PutOp | DeleteOp],
        failure: Sequence[PutOp | DeleteOp] = (),
    ) -> TxnResult:
        await self.barrier.wait()
        return await super().txn(compares, success, failure)


async def test_two_racing_operators_never_lose_a_change(
    etcd_cluster: EtcdCluster, etcd: EtcdClient, prefix: str
) -> None:
    barrier = asyncio.Barrier(2)
    args = [
        operator_cli.parser().parse_args(["drain", "--region", "eu", "--reason", f"by {who}"])
        for who in ("alice", "bob")
    ]
    outs = [(io.StringIO(), io.StringIO()) for _ in args]
    ops = [
        Operator(RacingClient(etcd_cluster.endpoints, barrier), prefix, who)
        for who in ("alice", "bob")
    ]
    codes = await asyncio.gather(
        *(operator_cli.execute(a, op, *o) for a, op, o in zip(args, ops, outs, strict=True))
    )
    assert sorted(codes) == [0, 1]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = outs[loser][1].getvalue()
    assert "ctl/intent/region/eu changed since it was read (absent)" in err
    assert f'"author":"{ops[winner].author}"' in err  # what is there now
    value = await get(etcd, prefix, "ctl/intent/region/eu")
    assert value is not None and value["author"] == ops[winner].author

    # The same with a key both read at one mod_revision, through the two steps directly.
    op = Operator(etcd, prefix, "carol")
    seen = await op.read("ctl/intent/region/eu")
    assert seen is not None
    await op.commit("ctl/intent/region/eu", seen, {"action": "drain", "reason": "first"})
    with pytest.raises(Conflict, match=f"revision {seen.mod_revision}.*first"):
        await op.commit("ctl/intent/region/eu", seen, None)
    assert (await get(etcd, prefix, "ctl/intent/region/eu")) == {
        "action": "drain",
        "reason": "first",
    }


def active_of(out: str) -> set[str]:
    line = re.search(r"^  active: (.*)$", out, re.M)
    assert line is not None, out
    return set(line[1].split(", "))


async def test_a_ramp_over_20_pops_activates_5_10_20_and_keeps_its_members(
    creds: Path, etcd: EtcdClient, prefix: str
) -> None:
    eu = [f"eu{i:02d}" for i in range(20)]
    for pop in eu:
        await register(etcd, prefix, pop, "eu")
    await register(etcd, prefix, "us01", "us")
    active: set[str] = set()
    for percent, count in ((25, 5), (50, 10)):
        code, out, err = await fleet(creds, "ramp", "--region", "eu", str(percent), "--reason", "r")
        assert (code, err) == (0, ""), err
        assert f"{count} of 20 members active" in out
        now = active_of(out)
        assert len(now) == count and active <= now  # raising never removes a PoP
        active = now
    ramp = await get(etcd, prefix, "ctl/ramp/region/eu")
    assert ramp is not None
    assert ramp["members"] == eu and ramp["percent"] == 50
    assert ramp_share(eu, str(ramp["salt"]), 50) == active  # what every agent computes

    code, _, err = await fleet(
        creds, "ramp", "--region", "eu", "75", "--members", "eu00,eu01", "--reason", "r"
    )
    assert code == 1
    assert "the members were frozen when the ramp started" in err
    code, _, err = await fleet(creds, "ramp", "--region", "eu", "--end", "--reason", "r")
    assert code == 1
    assert "is at 50%" in err

    code, out, _ = await fleet(creds, "ramp", "--region", "eu", "100", "--reason", "r")
    assert code == 0
    assert active_of(out) == set(eu)
    after = await get(etcd, prefix, "ctl/ramp/region/eu")
    assert after is not None and (after["salt"], after["members"]) == (ramp["salt"], eu)
    code, out, _ = await fleet(creds, "ramp", "--region", "eu", "--end", "--reason", "done")
    assert code == 0
    assert await get(etcd, prefix, "ctl/ramp/region/eu") is None


async def test_an_override_lives_as_long_as_its_lease(
    creds: Path, etcd: EtcdClient, prefix: str
) -> None:
    code, _, _ = await fleet(
        creds, "override", "web", "--pop", "ams1", "--ttl", "2s", "--reason", "rma"
    )
    assert code == 0
    key = f"{prefix}ctl/override/web/ams1"
    found = await etcd.range(key)
    assert found.kvs and found.kvs[0].lease != 0
    deadline = time.monotonic() + 10
    while (await etcd.range(key)).kvs:
        assert time.monotonic() < deadline, "the override outlived its lease"
        await asyncio.sleep(0.2)


async def test_status_counts_what_the_agents_published(
    creds: Path, etcd: EtcdClient, prefix: str
) -> None:
    assert (await fleet(creds, "policy", "web", "--min-pops", "2", "--reason", "k"))[0] == 0
    assert (await fleet(creds, "drain", "--pop", "fra1", "--reason", "disk"))[0] == 0
    ctl = (await etcd.range(f"{prefix}ctl/", prefix=True)).kvs
    latest = max(kv.mod_revision for kv in ctl)
    await register(etcd, prefix, "ams1", "eu", latest, web="A", dns="A")
    await register(etcd, prefix, "ams2", "eu", latest, web="A")
    await register(etcd, prefix, "fra1", "eu", latest - 1, web="D")
    await register(etcd, prefix, "par1", "eu", latest, web="W")
    await register(etcd, prefix, "nyc1", "us", latest, web="S")
    await register(etcd, prefix, "sfo1", "us", latest)  # registered, no state for web
    await etcd.put(f"{prefix}budget/slot/00", b"par1/web/health")

    code, out, err = await fleet(creds, "status", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    web = next(s for s in doc["services"] if s["name"] == "web")
    assert web["counts"] == {"A": 2, "D": 1, "W": 1, "S": 1, "silent": 2}
    assert web["silent"] == ["nyc1", "sfo1"]
    assert (web["min_pops"], web["min_pops_source"]) == (2, "ctl/policy")
    assert web["ctl"] == ["intent/pop/fra1"]
    dns = next(s for s in doc["services"] if s["name"] == "dns")
    assert dns["counts"]["silent"] == 5 and dns["min_pops_source"] == "agent default"
    assert doc["budget"]["taken"] == {"00": "par1/web/health"}
    assert doc["budget"]["source"] == "agent default"
    assert doc["not_applied"] == ["fra1"]

    code, out, _ = await fleet(creds, "status", "--json", "--region", "us", "--service", "web")
    doc = json.loads(out)
    assert [s["name"] for s in doc["services"]] == ["web"]
    assert doc["services"][0]["counts"] == {"A": 0, "D": 0, "W": 0, "S": 1, "silent": 2}

    code, out, _ = await fleet(creds, "status")
    assert code == 0
    assert re.search(r"^web +2 +2 +1 +1 +2 +intent/pop/fra1$", out, re.M), out
    assert "not applied: fra1" in out


async def test_wait_returns_once_every_pop_in_scope_applied_and_names_laggards(
    creds: Path, etcd: EtcdClient, prefix: str
) -> None:
    pops = ["ams1", "ams2", "ams3"]
    async with agents(etcd, prefix, pops, "eu"):
        code, out, err = await fleet(
            creds, "drain", "--region", "eu", "--reason", "m", "--wait", "--wait-max", "10"
        )
    assert (code, err) == (0, "")
    revision = (await etcd.range(f"{prefix}ctl/intent/region/eu")).kvs[0].mod_revision
    assert f"0/3 PoPs applied revision {revision}; waiting for ams1, ams2, ams3" in out
    assert out.endswith(f"3/3 PoPs applied revision {revision}\n")

    async with agents(etcd, prefix, pops, "eu", lagging=["ams2"]):
        start = time.monotonic()
        code, out, err = await fleet(
            creds, "undrain", "--region", "eu", "--reason", "m", "--wait", "--wait-max", "1.5"
        )
        assert time.monotonic() - start < 5
    assert code == 1
    assert "; waiting for ams2\n" in out
    assert re.search(
        r"timed out after 1.5s: 1 of 3 PoPs have not applied revision \d+: "
        r"ams2 \(at revision \d+\)",
        err,
    ), err


def test_a_bad_credential_file_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = credentials(tmp_path / "c.yaml", ["http://127.0.0.1:1"], "/x/", timeout="soon", prefx=1)
    assert cli.main(["fleet", "status", "--etcd", str(path)]) == 2
    err = capsys.readouterr().err
    assert "timeout: expected a duration like 1s or 800ms, got 'soon'" in err
    assert "prefx: unknown key" in err
    path = credentials(tmp_path / "d.yaml", ["ftp://h:1"], "/x/")
    assert cli.main(["fleet", "status", "--etcd", str(path)]) == 2
    assert "endpoints: expected http(s)://HOST:PORT, got 'ftp://h:1'" in capsys.readouterr().err
    assert cli.main(["fleet", "status", "--etcd", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read the etcd credential file" in capsys.readouterr().err


async def test_unreachable_etcd_exits_3_within_the_timeout(tmp_path: Path) -> None:
    with socket.socket() as closed, socket.socket() as silent:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections and never answers
        endpoints = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in (closed, silent)]
        path = credentials(tmp_path / "c.yaml", endpoints, "/x/", timeout="0.5s")
        start = time.monotonic()
        code, _, err = await fleet(path, "drain", "--pop", "a", "--reason", "r")
        took = time.monotonic() - start
    assert code == 3
    assert took < 3
    assert all(url in err for url in endpoints), err


async def test_status_and_a_write_over_tls_as_root(
    etcd_tls_auth: EtcdCluster, tmp_path: Path, prefix: str
) -> None:
    tls = etcd_tls_auth.tls_files()
    password = tmp_path / "password"
    password.write_text(etcd_tls_auth.credentials["root"] + "\n")
    settings = {
        "tls": {
            "ca_file": str(tls.ca_file),
            "cert_file": str(tls.cert_file),
            "key_file": str(tls.key_file),
        },
        "auth": {"user": "root", "password_file": str(password)},
    }
    path = credentials(tmp_path / "c.yaml", etcd_tls_auth.endpoints, prefix, **settings)
    code, out, err = await fleet(path, "freeze", "--reason", "incident", "--author", "ops")
    assert (code, err) == (0, "")
    code, out, err = await fleet(path, "status", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["frozen"]
    assert doc["ctl"][0]["key"] == "freeze" and doc["ctl"][0]["reason"] == "incident"

    password.write_text("wrong\n")
    code, _, err = await fleet(path, "status")
    assert code == 2
    assert "authentication failed" in err
