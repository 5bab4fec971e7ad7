"""nginx from Debian serving every bench target (one small worker, so it steals little CPU)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench.sandbox import Sandbox
from bench.targets import HTTP_PORT, TARGET_NET

NGINX = "/usr/sbin/nginx"
READY_TIMEOUT_S = 10.0

CONF = """\
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
daemon off;
events {{ worker_connections 8192; }}
http {{
    log_format probe '$msec $server_addr $http_user_agent';
    access_log {root}/access.log probe buffer=256k flush=1s;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    server {{
        listen [::]:{port} reuseport backlog=4096;
        location = /health {{ return 200 "ok\\n"; }}
    }}
}}
"""


def available() -> bool:
    return shutil.which(NGINX) is not None or Path(NGINX).exists()


class Nginx:
    """One nginx in the sandbox; `requests()` counts lines of its access log (one per probe)."""

    def __init__(self, box: Sandbox, root: Path) -> None:
        self.box = box
        self.root = root
        self.log = root / "access.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        # log_format must precede its use: nginx reads the http block in order.
        conf.write_text(CONF.format(root=self.root, port=HTTP_PORT))
        self.box.ip("-6", "route", "add", "local", str(TARGET_NET), "dev", "lo")
        self._proc = self.box.spawn(
            [NGINX, "-c", str(conf), "-p", str(self.root), "-e", str(self.root / "error.log")],
            stderr=self.root / "nginx.stderr",
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.root / 'nginx.stderr').read_text()}")
            if (self.root / "nginx.pid").exists():
                return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start within 10 s")

    def requests(self, since: float = 0.0, until: float = float("inf")) -> int:
        """Requests logged with a time (epoch seconds) in [since, until); the log is flushed
        at least every second, so wait a second after `until` before counting."""
        count = 0
        try:
            with self.log.open("rb") as f:
                for line in f:
                    stamp = float(line.split(b" ", 1)[0])
                    count += since <= stamp < until
        except FileNotFoundError:
            return 0
        return count

    def stop(self) -> None:
        if self._proc is not None:
            self.box.stop(self._proc)
            self._proc = None
