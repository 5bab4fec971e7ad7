"""HAProxy's health checks as the C yardstick: the same N targets as `server` lines, checked.

Debian's HAProxy (2.6) runs in the bench namespace with one thread (`nbthread 1`), one dummy
frontend (it refuses to start without one) and one backend holding a `server` line per
target with `check inter 1s` and `option httpchk`: each check opens a fresh connection, sends
`GET /health HTTP/1.1` and expects a 200, as the agent's fresh mode does. Its CPU is its user
+ system time over the window read from /proc, its probes are counted at nginx (the only
client during the window), its RSS is its peak (VmHWM); after the window the stats socket
says how many servers HAProxy holds up, so a window of failing checks is not taken for work.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

from bench.nginx import Nginx
from bench.procstat import cost, usage
from bench.sandbox import Sandbox
from bench.targets import HTTP_PORT, Timing, target_address

HAPROXY = "/usr/sbin/haproxy"
FRONTEND_PORT = 18080  # inside the bench namespace: nothing else listens there
READY_TIMEOUT_S = 10.0
# Client connections the dummy frontend may hold; the checks need one socket per server in
# flight on top, and HAProxy sizes its fd limit from both (the machine's is 20,000 here).
MAXCONN = 256
STATS_TIMEOUT_S = 5.0

CONF = """\
global
    nbthread 1
    maxconn {maxconn}
    pidfile {root}/haproxy.pid
    stats socket {root}/haproxy.sock mode 600 level user

defaults
    mode http
    timeout connect {timeout_ms}ms
    timeout check {timeout_ms}ms
    timeout client 5s
    timeout server 5s

frontend dummy
    bind 127.0.0.1:{frontend_port}
    default_backend edges

backend edges
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host bench hdr User-Agent haproxy
    http-check expect status 200
    default-server check inter {interval_ms}ms fall {fall} rise {rise}
{servers}
"""


def available() -> bool:
    return shutil.which("haproxy") is not None or Path(HAPROXY).exists()


def haproxy_version() -> str:
    try:
        out = subprocess.run(
            [HAPROXY, "-v"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "not installed"
    # "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/": up to the dash
    return out.stdout.strip().splitlines()[0].split(" - ")[0] if out.stdout.strip() else ""


def haproxy_conf(n: int, root: Path, timing: Timing) -> str:
    """The configuration checking targets 0..n-1 (IPv6 with a port: brackets-free `ipv6@`)."""
    servers = "\n".join(f"    server e{i} ipv6@{target_address(i)}:{HTTP_PORT}" for i in range(n))
    return CONF.format(
        maxconn=MAXCONN,
        root=root,
        timeout_ms=round(timing.timeout_s * 1000),
        frontend_port=FRONTEND_PORT,
        interval_ms=round(timing.interval_s * 1000),
        fall=timing.fall,
        rise=timing.rise,
        servers=servers,
    )


def run_haproxy(
    box: Sandbox,
    nginx: Nginx,
    work: Path,
    n: int,
    *,
    timing: Timing,
    warmup_s: float,
    window_s: float,
) -> dict[str, object]:
    """Start HAProxy checking n targets, measure it over the window, stop it; its row."""
    row: dict[str, object] = {"engine": "haproxy", "mode": "fresh", "n": n}
    if not available():
        row["skipped"] = "haproxy is not installed (make deps)"
        return row
    root = work / f"haproxy-{n}"
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "haproxy.cfg"
    conf.write_text(haproxy_conf(n, root, timing))
    log = root / "haproxy.log"
    # -db: stay in the foreground, one process (its PID is the one measured).
    proc = box.spawn([HAPROXY, "-db", "-f", str(conf)], stdout=log, stderr=log)
    try:
        _wait_ready(proc, root / "haproxy.sock", log)
        time.sleep(warmup_s)
        before = usage(proc.pid)
        wall0, t0 = time.time(), time.monotonic()
        time.sleep(window_s)
        after = usage(proc.pid)
        wall1, t1 = time.time(), time.monotonic()
        up, down = servers_up(root / "haproxy.sock")
    finally:
        box.stop(proc)
    time.sleep(1.2)  # nginx flushes its access log every second
    probes = nginx.requests(wall0, wall1)
    row.update(cost(before, after, probes, t1 - t0))
    row.update(
        jitter_p50_ms=None,
        jitter_p99_ms=None,
        missed_slots=None,
        failed=None,
        servers_up=up,
        servers_down=down,
        note=f"HAProxy's checks (fresh connections, nbthread 1); probes counted at nginx; "
        f"{up} of {n} servers up at the end of the window",
    )
    return row


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited {proc.returncode}: {log.read_text()[-2000:]}")
        if sock.exists():
            return
        time.sleep(0.05)
    raise RuntimeError(f"haproxy did not open its stats socket within {READY_TIMEOUT_S:g} s")


def servers_up(sock: Path) -> tuple[int, int]:
    """(up, not up) over the backend's servers, from `show stat` on the stats socket (a unix
    socket: reachable from outside the namespace by its path)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(STATS_TIMEOUT_S)
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        chunks = []
        with contextlib.suppress(TimeoutError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    if not lines or not lines[0].startswith("# "):
        return 0, 0
    header = lines[0][2:].split(",")
    pxname, svname, status = (header.index(k) for k in ("pxname", "svname", "status"))
    up = down = 0
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) <= status or fields[pxname] != "edges":
            continue
        if fields[svname] in ("FRONTEND", "BACKEND"):
            continue
        if fields[status].startswith("UP"):
            up += 1
        else:
            down += 1
    return up, down
