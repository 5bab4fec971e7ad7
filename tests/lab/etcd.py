"""A throwaway etcd cluster on loopback from Debian's etcd-server (FLEET.md §3.11, tier 1).

Every method is synchronous. `kill`, `restart`, `pause_all` and `resume_all` return at once, so
async tests call them directly and poll for the effect with their own deadline; `start`,
`wait_healthy` and `leader_index` block (briefly) on HTTP polls, so an async test with tasks of
its own running wraps them in `asyncio.to_thread`. Members are processes of ours, ended by PID.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from anycast_agent.fleet.etcd_http import TlsFiles
from tests.lab.processes import signal_pid, terminate
from tests.lab.wait import wait_for

ETCD = "etcd"
OPENSSL = "openssl"
START_ATTEMPTS = 3
HTTP_TIMEOUT_S = 1.0
# The keyspace of the agent (FLEET.md §3.2); the `pop1` user may read and write it.
AGENT_PREFIX = "/anycast/v1/"
AGENT_ROLE = "anycast-agent"


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None


class EtcdCluster:
    """`members` etcd processes on 127.0.0.1 with random ports; data and logs under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        members: int = 3,
        *,
        tls: bool = False,
        auth: bool = False,
        auth_token_ttl_s: int = 300,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
    ) -> None:
        self.workdir = workdir
        self.size = members
        self.tls = tls
        self.auth = auth
        self.auth_token_ttl_s = auth_token_ttl_s
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.credentials: dict[str, str] = {}
        self._members: list[_Member] = []
        self._scheme = "https" if tls else "http"
        self._ssl: ssl.SSLContext | None = None

    @property
    def endpoints(self) -> list[str]:
        return [f"{self._scheme}://127.0.0.1:{m.client_port}" for m in self._members]

    def tls_files(self) -> TlsFiles:
        """The CA of the members' certificate and a client certificate signed by it."""
        pki = self.workdir / "pki"
        return TlsFiles(pki / "ca.crt", pki / "client.crt", pki / "client.key")

    def start(self, timeout_s: float = 20.0) -> None:
        """Start every member and wait until the cluster has a leader; then enable auth."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self._make_pki()
            self._ssl = ssl.create_default_context(cafile=str(self.tls_files().ca_file))
        for attempt in range(1, START_ATTEMPTS + 1):
            self._plan(attempt)
            for index in range(self.size):
                self._spawn(index, state="new")
            try:
                self.wait_healthy(timeout_s)
                break
            except AssertionError:
                collided = "address already in use" in self.log_tail()
                self.stop()
                if not collided or attempt == START_ATTEMPTS:
                    raise
        if self.auth:
            self._enable_auth()

    def stop(self) -> None:
        """SIGTERM each member (the leader first), SIGKILL one that outlives 2 s; wait for each."""
        # A leader asked to stop first hands its role to its best-connected follower: quick
        # while that follower runs, up to 7 s when it is a follower that just stopped.
        try:
            first = [self.leader_index()]
        except (AssertionError, OSError, ValueError):
            first = []
        for index in first + [i for i in range(len(self._members)) if i not in first]:
            proc = self._members[index].proc
            if proc is not None:
                terminate(proc)
                self._members[index].proc = None

    def kill(self, index: int) -> None:
        """SIGKILL member `index` and wait for it to exit."""
        proc = self._members[index].proc
        if proc is not None:
            signal_pid(proc.pid, signal.SIGKILL)
            proc.wait()
            self._members[index].proc = None

    def restart(self, index: int) -> None:
        """Start member `index` again on its data dir; returns without waiting for it."""
        if self._members[index].proc is None:
            self._spawn(index, state="existing")

    def pause_all(self) -> None:
        for proc in self._running():
            signal_pid(proc.pid, signal.SIGSTOP)

    def resume_all(self) -> None:
        for proc in self._running():
            signal_pid(proc.pid, signal.SIGCONT)

    def running(self, index: int) -> bool:
        proc = self._members[index].proc
        return proc is not None and proc.poll() is None

    def leader_index(self) -> int:
        """The member every running member names as leader (AssertionError if they disagree)."""
        ids: dict[str, int] = {}
        leaders: set[str] = set()
        for index in self._live_indexes():
            status = self._post(index, "/v3/maintenance/status", {})
            header = status.get("header")
            ids[str(header.get("member_id") if isinstance(header, dict) else None)] = index
            leaders.add(str(status.get("leader", "0")))
        if len(leaders) != 1 or (leader := leaders.pop()) not in ids:
            raise AssertionError(f"no agreed leader among running members: {leaders}")
        return ids[leader]

    def wait_healthy(self, timeout_s: float = 10.0) -> float:
        """Wait until every running member is healthy and they agree on a leader."""
        try:
            return wait_for(self._healthy, timeout_s=timeout_s, what="a healthy etcd cluster")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 15) -> str:
        """The last log lines of every member, for failure messages."""
        parts = []
        for member in self._members:
            # The zap log, then stdout/stderr (where a failure to even start the logger lands).
            for path in (member.log_file, member.log_file.with_suffix(".out")):
                text = ""
                with contextlib.suppress(OSError):
                    text = path.read_text(errors="replace")
                tail = "\n".join(line[:400] for line in text.splitlines()[-lines:])
                parts.append(f"--- {member.name} ({path}) ---\n{tail}")
        return "\n".join(parts)

    def log_records(self, msg: str) -> list[dict[str, object]]:
        """Every zap log record of every member whose message is `msg`."""
        records = []
        for member in self._members:
            with contextlib.suppress(OSError):
                for line in member.log_file.read_text(errors="replace").splitlines():
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if isinstance(record, dict) and record.get("msg") == msg:
                            records.append(record)
        return records

    def _plan(self, attempt: int) -> None:
        ports = _free_ports(2 * self.size)
        self._members = [
            _Member(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.workdir / f"try{attempt}" / f"m{i}.etcd",
                log_file=self.workdir / f"try{attempt}" / f"m{i}.log",
            )
            for i in range(self.size)
        ]
        for member in self._members:
            member.data_dir.parent.mkdir(parents=True, exist_ok=True)

    def _spawn(self, index: int, *, state: str) -> None:
        member = self._members[index]
        client_url = self.endpoints[index]
        peers = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self._members)
        argv = [
            ETCD,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls=http://127.0.0.1:{member.peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{member.peer_port}",
            f"--initial-cluster={peers}",
            f"--initial-cluster-state={state}",
            f"--initial-cluster-token=lab-{self.workdir.name}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            # Off by default on 3.4; without it a rejoining member forces an election (FLEET.md).
            "--pre-vote=true",
            "--auth-token=simple",
            f"--auth-token-ttl={self.auth_token_ttl_s}",
            "--logger=zap",
            f"--log-outputs={member.log_file}",
        ]
        if self.tls:
            pki = self.workdir / "pki"
            argv += [f"--cert-file={pki / 'server.crt'}", f"--key-file={pki / 'server.key'}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with member.log_file.with_suffix(".out").open("ab") as out:
            member.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _running(self) -> list[subprocess.Popen[bytes]]:
        return [m.proc for m in self._members if m.proc is not None and m.proc.poll() is None]

    def _live_indexes(self) -> list[int]:
        return [i for i in range(self.size) if self.running(i)]

    def _healthy(self) -> bool:
        live = self._live_indexes()
        if not live:
            return False
        for index in live:
            request = urllib.request.Request(self.endpoints[index] + "/health")
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=self._ssl) as r:
                if json.loads(r.read()).get("health") != "true":
                    return False
        self.leader_index()
        return True

    def _post(self, index: int, path: str, body: object, token: str = "") -> dict[str, object]:
        request = urllib.request.Request(
            self.endpoints[index] + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": token} if token else {}),
        )
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=self._ssl) as r:
            answer = json.loads(r.read())
        if not isinstance(answer, dict):
            raise AssertionError(f"{path} answered {answer!r}")
        return answer

    def _enable_auth(self) -> None:
        """root (role root) and pop1 (read/write on AGENT_PREFIX), then auth on; via /v3/auth."""
        self.credentials = {"root": secrets.token_urlsafe(12), "pop1": secrets.token_urlsafe(12)}
        end = AGENT_PREFIX[:-1] + chr(ord(AGENT_PREFIX[-1]) + 1)
        permission = {"permType": "READWRITE", "key": _b64(AGENT_PREFIX), "range_end": _b64(end)}
        steps: list[tuple[str, dict[str, object]]] = [
            ("/v3/auth/user/add", {"name": "root", "password": self.credentials["root"]}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/role/add", {"name": AGENT_ROLE}),
            ("/v3/auth/role/grant", {"name": AGENT_ROLE, "perm": permission}),
            ("/v3/auth/user/add", {"name": "pop1", "password": self.credentials["pop1"]}),
            ("/v3/auth/user/grant", {"user": "pop1", "role": AGENT_ROLE}),
            ("/v3/auth/enable", {}),
        ]
        for path, body in steps:
            self._post(0, path, body)

    def _make_pki(self) -> None:
        """A CA, a server certificate for IP 127.0.0.1 and a client certificate, by openssl."""
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl(
            pki,
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=anycast lab etcd CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )
        for name, usage, san in (
            ("server", "serverAuth,clientAuth", "subjectAltName=IP:127.0.0.1"),
            ("client", "clientAuth", "subjectAltName=DNS:pop1"),
        ):
            _openssl(
                pki,
                "req",
                *ec,
                "-keyout",
                f"{name}.key",
                "-out",
                f"{name}.csr",
                "-subj",
                f"/CN={name}",
            )
            (pki / f"{name}.ext").write_text(f"{san}\nextendedKeyUsage={usage}\n")
            _openssl(
                pki,
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                f"{name}.crt",
                "-days",
                "2",
                "-extfile",
                f"{name}.ext",
            )


def _openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(
        [OPENSSL, *args], cwd=cwd, capture_output=True, check=False, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)}: {done.stderr.decode(errors='replace')}")


def _free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out; all bound at once so they differ (released on return)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
