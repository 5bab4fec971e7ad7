"""The operator's command line client of the control endpoint (status, drain, med, ramp, reload).

Plain synchronous HTTP (http.client), over TCP or a unix socket, so it needs nothing beyond the
standard library and works from a rescue shell. Exit codes: 0 done, 1 refused by the agent (its
error on stderr), 2 usage, 3 cannot reach the agent.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import yaml

from anycast_agent.client_wait import wait_withdrawn
from anycast_agent.core.intents import RampAction

ENV_URL = "ANYCAST_AGENT_URL"
ENV_TOKEN_FILE = "ANYCAST_AGENT_TOKEN_FILE"
DEFAULT_URL = "http://127.0.0.1:9179"
DEFAULT_TOKEN_FILE = Path("/etc/anycast-agent/token")
DEFAULT_STATE_DIR = Path("/var/lib/anycast-agent")
TIMEOUT_S = 10.0

ON_STOP_TIMEOUT_S = 1.0
WAIT_MAX_S = 300.0
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

CLIENT_COMMANDS = frozenset({"status", "drain", "undrain", "med", "ramp", "reload", "state"})


class UsageError(Exception):
    """A command line that cannot become a request (exit 2)."""


class Unreachable(Exception):
    """The agent could not be reached or did not answer (exit 3). `gone`: nothing listens
    there at all (refused, or no socket file), as opposed to a timeout or a cut connection."""

    def __init__(self, message: str, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any  # the decoded JSON (or the raw text when the server sent none)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the agent listens: `http://HOST:PORT[/base]`, `https://...` or `unix:/path`."""

    url: str
    token: str | None
    timeout_s: float = TIMEOUT_S

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        if self.url.startswith("unix:"):
            path = self.url[5:]
            if not path.startswith("/"):
                raise UsageError(f"a unix socket URL needs an absolute path, got {self.url!r}")
            return _UnixConnection(path, self.timeout_s), ""
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"expected http://HOST:PORT or unix:/path, got {self.url!r}")
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"bad port in {self.url!r}") from None
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return cls(parts.hostname, port, timeout=self.timeout_s), parts.path.rstrip("/")

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Reply:
        conn, base = self._connection()
        headers = {"Accept": "application/json", "User-Agent": "anycast-agent-client"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None and method != "GET":
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, base + path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            gone = isinstance(exc, ConnectionRefusedError | FileNotFoundError)
            raise Unreachable(f"cannot reach the agent at {self.url}: {exc}", gone) from None
        finally:
            conn.close()
        text = raw.decode("utf-8", "replace")
        try:
            decoded: Any = json.loads(text)
        except (ValueError, RecursionError):
            decoded = text
        return Reply(response.status, decoded)


# --- the command line -----------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=None,
        help=f"the agent's control endpoint: http://HOST:PORT or unix:/path "
        f"(default: ${ENV_URL}, else {DEFAULT_URL})",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"bearer token for changes (default: ${ENV_TOKEN_FILE}, else the token the agent "
        f"made in the state_dir of --config, else {DEFAULT_TOKEN_FILE} or "
        f"{DEFAULT_STATE_DIR / 'control.token'}, the first readable)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the agent's config, to find the token it made in its state_dir",
    )
    p.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help="seconds (default: %(default)s)"
    )


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add status, drain, undrain, med, ramp and reload to the `anycast-agent` parser."""
    p = sub.add_parser("status", help="show services, targets and routes of the running agent")
    p.add_argument("--json", action="store_true", help="print the raw JSON status")
    p.add_argument("--service", metavar="SERVICE", help="show only this service")
    _common(p)

    p = sub.add_parser("drain", help="de-prefer then withdraw a service (or --all: the PoP)")
    p.add_argument("service", nargs="?", metavar="SERVICE")
    p.add_argument("--all", action="store_true", help="drain every service of this PoP")
    p.add_argument("--reason", help="why (shown in status, kept in state; required)")
    p.add_argument("--expires", metavar="DURATION", help="undrain by itself after e.g. 30m")
    p.add_argument("--author", help="who asks (default: the token's identity)")
    p.add_argument("--yes", action="store_true", help="do not ask before draining the PoP")
    p.add_argument(
        "--wait", action="store_true", help="return once ExaBGP holds none of the drained routes"
    )
    p.add_argument(
        "--wait-max", type=float, default=WAIT_MAX_S, help="seconds (default: %(default)s)"
    )
    p.add_argument("--neighbor", help="drain one BGP session only (its neighbor address)")
    p.add_argument(
        "--override-fleet",
        action="store_true",
        help="break-glass: withdraw after the grace without the fleet guard's permit (etcd "
        "unreachable and this PoP black-holes traffic); audited and alerting",
    )
    p.add_argument(
        "--on-stop",
        action="store_true",
        help="for the unit's ExecStop: not persisted (the next start is not drained), no "
        f"question, and a no-op when the agent does not answer within {ON_STOP_TIMEOUT_S:g}s",
    )
    _common(p)

    p = sub.add_parser("undrain", help="end a drain (the service ramps back)")
    p.add_argument("service", nargs="?", metavar="SERVICE")
    p.add_argument("--all", action="store_true", help="end the PoP-wide drain")
    p.add_argument("--neighbor", help="end the drain of one BGP session (it ramps back)")
    p.add_argument("--author", help="who asks (default: the token's identity)")
    _common(p)

    p = sub.add_parser("med", help="override a service's MED (or --clear the override)")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("value", nargs="?", metavar="VALUE", help="0-4294967295")
    p.add_argument("--clear", action="store_true", help="remove the override")
    p.add_argument("--reason", help="why (required to set a MED)")
    p.add_argument("--expires", metavar="DURATION", help="drop the override after e.g. 2h")
    p.add_argument("--author", help="who asks (default: the token's identity)")
    _common(p)

    p = sub.add_parser("ramp", help="hold, resume, advance or restart a service's ramp")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("action", choices=[a.value for a in RampAction])
    p.add_argument("--author", help="who asks (default: the token's identity)")
    _common(p)

    p = sub.add_parser("reload", help="re-read the config; the agent keeps the old one on errors")
    p.add_argument(
        "--allow-withdraw",
        action="store_true",
        help="confirm removing routes the config drops when they are over half of the PoP's",
    )
    _common(p)

    p = sub.add_parser("state", help="reset an unreadable state file (state reset --reason R)")
    p.add_argument("action", choices=["reset"])
    p.add_argument("--reason", required=True, help="why (logged: the reset is audited)")
    p.add_argument("--author", help="who asks (default: the token's identity)")
    _common(p)


def _state_dir(config: Path | None) -> Path:
    """The state_dir the agent of `config` uses (the default one without a config)."""
    if config is not None:
        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read the config {config}: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("state_dir"), str):
            return Path(data["state_dir"])
    return DEFAULT_STATE_DIR


def _token(arg: Path | None, config: Path | None = None) -> str | None:
    path = arg
    if path is None and (env := os.environ.get(ENV_TOKEN_FILE)):
        path = Path(env)
    if path is None:
        made = _state_dir(config) / "control.token"
        readable = [p for p in (made, DEFAULT_TOKEN_FILE) if os.access(p, os.R_OK)]
        if not readable:
            return None
        path = readable[0]
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the token file {path}: {exc}") from None
    if not token:
        raise UsageError(f"the token file {path} is empty")
    return token


def _endpoint(args: argparse.Namespace) -> Endpoint:
    url = args.url or os.environ.get(ENV_URL) or DEFAULT_URL
    return Endpoint(url, _token(args.token_file, args.config), args.timeout)


def _scope(args: argparse.Namespace) -> str:
    if bool(args.service) == bool(args.all):
        raise UsageError(f"{args.command}: name one SERVICE or --all")
    return "/v1" if args.all else f"/v1/services/{quote(args.service, safe='')}"


def _intent_body(args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    body = {k: v for k, v in fields.items() if v is not None}
    if getattr(args, "author", None):
        body["author"] = args.author
    return body


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The HTTP request a client command makes: method, path, JSON body."""
    match args.command:
        case "status" if args.service:
            return "GET", f"/v1/status?service={quote(args.service, safe='')}", None
        case "status":
            return "GET", "/v1/status", None
        case "drain":
            reason = args.reason or ("the unit is stopping" if args.on_stop else None)
            if reason is None:
                raise UsageError("drain: --reason is required")
            body = _intent_body(
                args, reason=reason, expires_in=args.expires, neighbor=args.neighbor
            )
            if args.on_stop:
                body["on_stop"] = True
            if args.override_fleet:
                body["override_fleet"] = True
            elif args.all and not args.yes and not _confirmed("Drain every service of this PoP?"):
                raise UsageError("drain --all: not confirmed (--yes skips the question)")
            return "POST", _scope(args) + "/drain", body
        case "undrain":
            return "POST", _scope(args) + "/undrain", _intent_body(args, neighbor=args.neighbor)
        case "med":
            path = f"/v1/services/{quote(args.service, safe='')}/med"
            if args.clear == (args.value is not None):
                raise UsageError("med: give a VALUE or --clear")
            if args.clear:
                return "DELETE", path, _intent_body(args)
            if not args.reason:
                raise UsageError("med: --reason is required to set a MED")
            try:
                med = int(args.value)
            except ValueError:
                raise UsageError(f"med: VALUE must be an integer, got {args.value!r}") from None
            return (
                "PUT",
                path,
                _intent_body(args, med=med, reason=args.reason, expires_in=args.expires),
            )
        case "ramp":
            path = f"/v1/services/{quote(args.service, safe='')}/ramp"
            return "POST", path, _intent_body(args, action=args.action)
        case "reload":
            return "POST", "/v1/reload", {"allow_withdraw": True} if args.allow_withdraw else {}
        case "state":
            return "POST", "/v1/state/reset", _intent_body(args, reason=args.reason)
    raise UsageError(f"not a client command: {args.command!r}")


def run_client(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run one client command; return the exit code (0 ok, 1 refused, 2 usage, 3 unreachable)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    on_stop = getattr(args, "on_stop", False)
    try:
        method, path, body = _request(args)
        endpoint = _endpoint(args)
        if on_stop:  # systemd also runs ExecStop after the agent exited: never hang there
            endpoint = replace(endpoint, timeout_s=min(endpoint.timeout_s, ON_STOP_TIMEOUT_S))
        reply = endpoint.request(method, path, body)
    except UsageError as exc:
        err.write(f"anycast-agent: {exc}\n")
        return EXIT_USAGE
    except Unreachable as exc:
        if on_stop:
            out.write(f"no agent answered ({exc}): nothing to drain\n")
            return EXIT_OK
        err.write(f"anycast-agent: {exc}\n")
        return EXIT_UNREACHABLE
    if reply.status >= 400:
        err.write(_refusal(args.command, reply))
        return EXIT_REFUSED
    if args.command == "status":
        out.write(
            json.dumps(reply.body, indent=2) + "\n" if args.json else format_status(reply.body)
        )
    else:
        out.write(_done(args, reply.body))
    if getattr(args, "wait", False):

        def status() -> Any:
            """The status document; None when the agent is gone (it exited: nothing is left for
            it to withdraw); Ellipsis when this attempt told nothing (asked again)."""
            try:
                reply = endpoint.request("GET", "/v1/status")
            except Unreachable as exc:
                if exc.gone and on_stop:
                    return None
                return ...  # a timeout or a cut connection says nothing about the routes
            return reply.body if reply.status == 200 else ...

        return EXIT_OK if wait_withdrawn(status, args.service, out, args.wait_max) else EXIT_REFUSED
    return EXIT_OK


def _refusal(command: str, reply: Reply) -> str:
    body = reply.body
    if not isinstance(body, dict):
        return f"anycast-agent {command}: HTTP {reply.status}: {clean(str(body))[:500]}\n"
    lines = [
        f"anycast-agent {command}: {clean(str(body.get('error', 'refused')))} (HTTP {reply.status})"
    ]
    detail = body.get("detail")
    if isinstance(detail, list):
        lines += [
            f"  {clean(d['message'] if isinstance(d, dict) and 'message' in d else str(d))}"
            for d in detail
        ]
    elif isinstance(detail, dict | str) and detail:
        lines.append(f"  {clean(json.dumps(detail) if isinstance(detail, dict) else detail)}")
    return "\n".join(lines) + "\n"


def _done(args: argparse.Namespace, body: Any) -> str:
    what = getattr(args, "service", None) or "the PoP"
    match args.command:
        case "drain":
            return f"draining {what}\n"
        case "undrain":
            return f"undrained {what} (it ramps back)\n"
        case "med":
            return (
                f"MED override cleared for {what}\n"
                if args.clear
                else f"MED of {what} overridden to {args.value}\n"
            )
        case "ramp":
            return f"ramp of {what}: {args.action}\n"
        case "reload":
            return "configuration reloaded\n"
        case "state":
            return "state reset: no intents; the services ramp back\n"
    return json.dumps(body) + "\n"


def _confirmed(question: str) -> bool:
    """Ask on a terminal; without one (scripts, CI) there is no one to ask: go ahead."""
    if not sys.stdin.isatty():
        return True
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# --- status table -----------------------------------------------------------------------------


def clean(text: str) -> str:
    """Never let a target's reason (from a probe's output) drive the operator's terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _drain_text(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    scope = "PoP: " if d.get("scope") == "pop" else ""
    until = f", {d['expires_in_s']:.0f}s left" if d.get("expires_in_s") is not None else ""
    return f"{scope}{d.get('reason', '')} ({d.get('author', '?')}{until})"


def _med_text(s: dict[str, Any]) -> str:
    med = "-" if s.get("med") is None else str(s["med"])
    if s.get("med_override"):
        med += f" (override {s['med_override']['med']})"
    return med


def format_status(status: Any) -> str:
    """The status JSON as the tables `anycast-agent status` prints."""
    if not isinstance(status, dict):
        return clean(str(status)) + "\n"
    channel = "up" if status.get("channel_up") else "DOWN"
    lines = [
        f"pop {status.get('pop')}  agent {status.get('version')}  exabgp channel {channel}  "
        f"ready {'yes' if status.get('ready') else 'no'}  starts {status.get('starts')}"
    ]
    if status.get("last_good_fallback"):
        lines.append("WARNING: running the last-good config (the configured one is invalid)")
    if status.get("state_unreadable"):
        lines.append("WARNING: the state file is unreadable: every service is drained")
    fleet = status.get("fleet") or {}
    if fleet.get("mode") not in (None, "standalone"):
        lines.append(f"fleet {fleet['mode']}: {fleet.get('why', '')}")
    neighbors = ", ".join(f"{n['address']} {n['state']}" for n in status.get("neighbors", []))
    lines.append(f"neighbors: {neighbors or '-'}")
    services = status.get("services", [])
    rows = [("SERVICE", "STATE", "STAGE", "MED", "HEALTHY", "DRAIN")]
    for s in services:
        state = s["state"] + (" (suppressed)" if s.get("suppressed") else "")
        stage = f"{s['stage']}%" + (" held" if s.get("ramp_held") else "")
        rows.append(
            (
                s["name"],
                state,
                stage,
                _med_text(s),
                f"{s['healthy']}/{s['total']}",
                _drain_text(s.get("drain")),
            )
        )
    lines += ["", *table(rows)]
    trows = [("SERVICE/TARGET", "KIND", "STATE", "LATENCY", "LAST")]
    for s in services:
        for t in s.get("targets", []):
            latency = t.get("last_latency_s")
            last = (
                "-"
                if t.get("last_ok") is None
                else "ok"
                if t["last_ok"]
                else t.get("last_reason") or "failed"
            )
            trows.append(
                (
                    f"{s['name']}/{t['name']}",
                    t["kind"],
                    t["state"],
                    "-" if latency is None else f"{latency * 1000:.0f}ms",
                    last,
                )
            )
    if len(trows) > 1:
        lines += ["", *table(trows)]
    lines += [f"{s['name']}: {s['fleet_guard']}" for s in services if s.get("fleet_guard")]
    return "\n".join(clean(line) for line in lines) + "\n"
