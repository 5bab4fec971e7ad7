"""`anycast-agent fleet ...`: the operator's command line over etcd (never through an agent).

It reads an operator credential file, runs one `operator` call and prints what happened.
Exit codes: 0 done, 1 refused / lost a race / PoPs did not follow in time, 2 usage or
credentials, 3 etcd unreachable or the outcome of a write unknown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import yaml
from pydantic import ValidationError

from anycast_agent.client import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from anycast_agent.config.fleet import EtcdAccess
from anycast_agent.config.load import format_errors
from anycast_agent.fleet.etcd_http import (
    EtcdClient,
    EtcdError,
    EtcdRejected,
    EtcdUnavailable,
    TlsFiles,
)
from anycast_agent.fleet.operator import (
    IntentAction,
    Operator,
    OperatorRefused,
    RampChange,
    Written,
)
from anycast_agent.fleet.operator_args import parser
from anycast_agent.fleet.operator_status import format_status, status_document
from anycast_agent.fleet.operator_view import Scope


class UsageError(Exception):
    """A command line or credential file that cannot become a request (exit 2)."""


# The operator credential file: which etcd, and as whom (the agent's `fleet:` keys).
OperatorEtcd = EtcdAccess


def load_credentials(path: Path) -> tuple[OperatorEtcd, str | None]:
    """The file's settings and the password its auth names; UsageError naming key and value."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the etcd credential file {path}: {exc}") from None
    try:
        settings = OperatorEtcd.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(format_errors(exc, data))
        raise UsageError(f"{path}: invalid etcd credentials: {problems}") from None
    if settings.auth is None:
        return settings, None
    try:
        password = settings.auth.password_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        where = f"auth.password_file {str(settings.auth.password_file)!r}"
        raise UsageError(f"{path}: {where}: cannot read it: {exc.__class__.__name__}") from None
    return settings, password


def main(argv: list[str], *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    return run_fleet(parser().parse_args(argv), stdout=stdout, stderr=stderr)


def run_fleet(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        settings, password = load_credentials(args.etcd)
        author = "" if args.fleet_command == "status" else args.author or os.environ.get("USER")
        if author is None:
            raise UsageError("who is writing? --author NAME (no $USER)")
        tls = None
        if settings.tls is not None:
            tls = TlsFiles(settings.tls.ca_file, settings.tls.cert_file, settings.tls.key_file)
        user = settings.auth.user if settings.auth is not None else None
        client = EtcdClient(
            settings.endpoints, timeout_s=settings.timeout, tls=tls, user=user, password=password
        )
    except (UsageError, EtcdError) as exc:  # EtcdError: the TLS files
        err.write(f"anycast-agent fleet: {exc}\n")
        return EXIT_USAGE
    op = Operator(client, settings.prefix, author)
    return asyncio.run(execute(args, op, out, err, settings.endpoints))


async def execute(
    args: argparse.Namespace,
    op: Operator,
    out: TextIO,
    err: TextIO,
    endpoints: Sequence[str] = (),
) -> int:
    """Run one parsed command with `op` (its client closed after); the exit code."""
    what = f"anycast-agent fleet {args.fleet_command}"
    async with op.client:
        try:
            await _command(args, op, out)
        except UsageError as exc:
            err.write(f"{what}: {exc}\n")
            return EXIT_USAGE
        except OperatorRefused as exc:
            err.write(f"{what}: {exc}\n")
            return EXIT_REFUSED
        except EtcdRejected as exc:  # authentication or permissions: the credentials
            err.write(f"{what}: etcd refused: {exc}\n")
            return EXIT_USAGE
        except EtcdUnavailable as exc:
            err.write(f"{what}: etcd unreachable (tried {', '.join(endpoints)}): {exc}\n")
            return EXIT_UNREACHABLE
        except EtcdError as exc:  # a lost answer to a write, or a member talking nonsense
            err.write(f"{what}: {exc}\n")
            return EXIT_UNREACHABLE
    return EXIT_OK


async def _command(args: argparse.Namespace, op: Operator, out: TextIO) -> None:
    cmd = args.fleet_command
    scope = Scope(vars(args).get("pop"), vars(args).get("region"), vars(args).get("service"))
    match cmd:
        case "status":
            doc = status_document(await op.snapshot(), op.prefix, args.region, args.service)
            out.write(json.dumps(doc, indent=2) + "\n" if args.json else format_status(doc))
            return
        case "drain" | "med":
            action = IntentAction(cmd)
            med = args.med if cmd == "med" else None
            done = await op.set_intent(
                scope,
                action,
                reason=args.reason,
                med=med,
                expires_s=args.expires,
                replace=args.replace,
            )
        case "undrain" | "unmed":
            done = await op.clear_intent(scope, IntentAction(cmd.removeprefix("un")))
        case "ramp":
            try:
                scope.ramp_key()
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            if args.end and args.percent is not None:
                raise UsageError("--end takes no PERCENT")
            if args.end:
                done = await op.end_ramp(scope, force=args.force)
            elif args.percent is None:
                raise UsageError("give a PERCENT (0-100), or --end")
            else:
                change = await op.ramp(
                    scope, args.percent, reason=args.reason, members=args.members
                )
                out.write(_ramped(change))
                await _wait(args, op, scope, change.revision, out)
                return
        case "freeze":
            done = await op.put("ctl/freeze", {}, reason=args.reason, ttl_s=args.expires, keep=True)
        case "unfreeze":
            done = await op.delete("ctl/freeze")
        case "policy" if args.clear:
            done = await op.delete(f"ctl/policy/{args.service}")
        case "policy":
            fields = {"min_pops": args.min_pops}
            done = await op.put(f"ctl/policy/{args.service}", fields, reason=args.reason)
        case "budget" if args.clear:
            done = await op.delete("ctl/budget")
        case "budget":
            fields = {"slots": args.slots, "window_s": args.window}
            done = await op.put("ctl/budget", fields, reason=args.reason)
        case "override" if args.clear:
            done = await op.delete(f"ctl/override/{args.service}/{args.pop}")
        case "override":
            key = f"ctl/override/{args.service}/{args.pop}"
            done = await op.put(key, {}, reason=args.reason, ttl_s=args.ttl)
        case _:
            raise UsageError(f"not a fleet command: {cmd!r}")
    out.write(_written(done, args.reason, op.author))
    if done.revision:
        await _wait(args, op, scope, done.revision, out)


async def _wait(
    args: argparse.Namespace, op: Operator, scope: Scope, revision: int, out: TextIO
) -> None:
    if not getattr(args, "wait", False):
        return

    def progress(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    await op.wait_applied(scope, revision, timeout_s=args.wait_max, progress=progress)


def _show(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def _written(done: Written, reason: str, author: str) -> str:
    if not done.revision:
        if done.after is not None:
            return f"{done.key} is already set, left as it is: {_show(done.after)}\n"
        return f"nothing to do: {done.key} does not exist\n"
    if done.after is None:
        return (
            f"deleted {done.key} at revision {done.revision} (was {_show(done.before)}; "
            f"reason {reason!r}, by {author})\n"
        )
    was = f" (replaced {_show(done.before)})" if done.before is not None else ""
    return f"set {done.key} = {_show(done.after)} at revision {done.revision}{was}\n"


def _ramped(change: RampChange) -> str:
    verb = "started" if change.started else "moved"
    active = sorted(change.after)
    lines = [
        f"ramp {change.key} {verb} at {change.percent:g}% (revision {change.revision}): "
        f"{len(active)} of {len(change.members)} members active",
        f"  active: {', '.join(active) or '-'}",
    ]
    if joined := sorted(change.after - change.before):
        lines.append(f"  joining: {', '.join(joined)}")
    if left := sorted(change.before - change.after):
        lines.append(
            f"  leaving (de-preferred, then withdrawn through the guard): {', '.join(left)}"
        )
    if change.started:
        lines.append(f"  members frozen for this ramp: {', '.join(change.members)}")
    return "\n".join(lines) + "\n"
