"""A fake edge server (HTTP or bare TCP) whose answers a test changes through a control file.

Run as `python3 edge_server.py --mode http --bind 203.0.113.11 --port 8080 --ready-file F
[--control C] [--status 200]`; standalone (no package imports) so it starts in any namespace.
The control file is JSON, re-read on every request:
{"status": 500, "body": "...", "headers": {"X-Load": "0.9"}, "delay_s": 2.0,
"jitter_s": 0.2} (each answer waits delay_s +- up to jitter_s, uniformly).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def _response(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {"status": args.status, "body": "ok\n", "headers": {}, "delay_s": 0}
    if args.control:
        with contextlib.suppress(FileNotFoundError):
            settings.update(json.loads(Path(args.control).read_text()))
    return settings


def _handler(args: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, with_body: bool) -> None:
            settings = _response(args)
            jitter = float(settings.get("jitter_s", 0))
            delay = float(settings["delay_s"]) + random.uniform(-jitter, jitter)
            if delay > 0:
                time.sleep(delay)
            body = str(settings["body"]).encode()
            self.send_response(int(settings["status"]))
            for key, value in dict(settings["headers"]).items():
                self.send_header(str(key), str(value))
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def log_message(self, format: str, *fargs: Any) -> None:
            sys.stderr.write(f"{self.address_string()} {format % fargs}\n")
            sys.stderr.flush()

    return Handler


def _announce_ready(path: str) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, path)


def _serve_tcp(args: argparse.Namespace) -> None:
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.bind, args.port))
        sock.listen(128)
        _announce_ready(args.ready_file)
        while True:
            conn, _ = sock.accept()
            conn.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["http", "tcp"], default="http")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--control")
    parser.add_argument("--status", type=int, default=200)
    args = parser.parse_args()
    if args.mode == "tcp":
        _serve_tcp(args)
        return 0

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
        daemon_threads = True

    server = Server((args.bind, args.port), _handler(args))
    _announce_ready(args.ready_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
