"""Edge servers in a namespace whose failures tests inject for real: kill, SIGSTOP, HTTP 500."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

from tests.lab.netns import Netns
from tests.lab.processes import signal_pid, terminate
from tests.lab.wait import wait_for

EdgeMode = Literal["http", "tcp"]
EDGE_SCRIPT = Path(__file__).with_name("edge_server.py")


class EdgeServer:
    """One server process bound to `address:port`; its address must already exist in the ns."""

    def __init__(
        self,
        netns: Netns,
        workdir: Path,
        name: str,
        address: str,
        port: int = 8080,
        mode: EdgeMode = "http",
        status: int = 200,
    ) -> None:
        self.netns = netns
        self.name = name
        self.address = address
        self.port = port
        self.mode = mode
        self.status = status
        self.control_path = workdir / f"edge-{name}.json"
        self.ready_path = workdir / f"edge-{name}.ready"
        self.log_path = workdir / f"edge-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/health"

    def start(self, timeout_s: float = 5.0) -> float:
        """Start the server; return the seconds until it is listening."""
        self.ready_path.unlink(missing_ok=True)
        self.proc = self.netns.popen(
            [
                sys.executable,
                str(EDGE_SCRIPT),
                "--mode",
                self.mode,
                "--bind",
                self.address,
                "--port",
                str(self.port),
                "--ready-file",
                str(self.ready_path),
                "--control",
                str(self.control_path),
                "--status",
                str(self.status),
            ],
            stdout_path=self.log_path,
            stderr_path=self.log_path,
        )
        proc = self.proc
        return wait_for(
            lambda: self._ready(proc),
            timeout_s=timeout_s,
            what=f"edge {self.name} listening on {self.address}:{self.port}",
        )

    def _ready(self, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"edge {self.name} exited {proc.returncode}: {self.log_tail()}")
        return self.ready_path.exists()

    def set_response(
        self,
        status: int = 200,
        body: str = "ok\n",
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
    ) -> None:
        """Change what every following request gets (atomic: no request sees half a file)."""
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "status": status,
                    "body": body,
                    "headers": headers or {},
                    "delay_s": delay_s,
                    "jitter_s": jitter_s,
                }
            )
        )
        os.replace(tmp, self.control_path)

    def set_status(self, status: int) -> None:
        self.set_response(status=status)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"edge {self.name} was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            signal_pid(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def sigstop(self) -> None:
        signal_pid(self.pid, signal.SIGSTOP)

    def sigcont(self) -> None:
        signal_pid(self.pid, signal.SIGCONT)

    def restart(self, timeout_s: float = 5.0) -> float:
        if self.running:
            self.sigcont()
        self.kill()
        return self.start(timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"
