"""The grammar of `anycast-agent fleet ...`: its arguments, parsed and checked, apart from
`operator_cli`, which runs them over etcd, so that the `anycast-agent` parser (which every
`anycast-agent run` builds) does not import the etcd client."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from anycast_agent.config.types import Name, parse_duration

DEFAULT_ETCD = Path("/etc/anycast-agent/fleet-operator.yaml")
MED_LIMIT = 4294967294  # the highest MED an agent takes from ctl/intent (core.fleet_intents)
_NAME: TypeAdapter[str] = TypeAdapter(Name)


def _arg(
    parse: type[int] | type[float], low: float, high: float, what: str
) -> Callable[[str], int | float]:
    def check(text: str) -> int | float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low:g}..{high:g}, got {text!r}")
        return value

    return check


def _name(text: str) -> str:
    try:
        return _NAME.validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"not a name like ams1 or eu-west: {text!r}") from None


def _members(text: str) -> list[str]:
    return [_name(m.strip()) for m in text.split(",") if m.strip()]


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"a duration of at least 1s, got {text!r}")
    return seconds


def add_fleet_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `fleet` (its own subcommands) to the `anycast-agent` parser."""
    fleet = sub.add_parser("fleet", help="drain, ramp and watch the whole fleet through etcd")
    add_fleet_arguments(fleet)


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    cmds = p.add_subparsers(dest="fleet_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--etcd",
        type=Path,
        default=DEFAULT_ETCD,
        help="the operator's etcd credential file (default: %(default)s)",
    )
    write = argparse.ArgumentParser(add_help=False, parents=[common])
    write.add_argument("--reason", required=True, help="why (stored in the key, or echoed)")
    write.add_argument("--author", help="who (default: $USER)")
    waits = argparse.ArgumentParser(add_help=False)
    waits.add_argument(
        "--wait", action="store_true", help="return once every PoP in scope applied the change"
    )
    waits.add_argument(
        "--wait-max", type=_arg(float, 0, 86400, "--wait-max"), default=120.0, metavar="S"
    )

    s = cmds.add_parser("status", parents=[common], help="per service: PoPs, K, budget, intents")
    s.add_argument("--service", type=_name)
    s.add_argument("--region", type=_name)
    s.add_argument("--json", action="store_true", help="print the status as JSON")

    for name, what in (
        ("drain", "drain a PoP, a region or a service"),
        ("undrain", "end a drain (its own scope only)"),
        ("med", "set the MED of a PoP, a region or a service"),
        ("unmed", "end a MED intent"),
    ):
        c = cmds.add_parser(name, parents=[write, waits], help=what)
        scope = c.add_mutually_exclusive_group(required=True)
        for flag in ("--pop", "--region", "--service"):
            scope.add_argument(flag, type=_name)
        if name == "med":
            c.add_argument("med", type=_arg(int, 0, MED_LIMIT, "MED"), metavar="MED")
        if name in ("drain", "med"):
            c.add_argument("--expires", type=_duration, metavar="DURATION", help="e.g. 2h")
            c.add_argument("--replace", action="store_true", help="replace a med/drain intent")

    r = cmds.add_parser("ramp", parents=[write, waits], help="ramp a region and/or a service")
    r.add_argument("percent", nargs="?", type=_arg(float, 0, 100, "PERCENT"), metavar="PERCENT")
    r.add_argument("--region", type=_name)
    r.add_argument("--service", type=_name)
    r.add_argument("--members", type=_members, help="a,b,c: the members at ramp start")
    r.add_argument("--end", action="store_true", help="delete the ramp (at 100%%, or --force)")
    r.add_argument("--force", action="store_true", help="end a ramp below 100%%")

    f = cmds.add_parser("freeze", parents=[write], help="refuse every health withdraw")
    f.add_argument("--expires", type=_duration, metavar="DURATION")
    cmds.add_parser("unfreeze", parents=[write], help="end the freeze")

    pol = cmds.add_parser("policy", parents=[write], help="a service's K (min_pops)")
    pol.add_argument("service", type=_name)
    k = pol.add_mutually_exclusive_group(required=True)
    k.add_argument("--min-pops", type=_arg(int, 0, 120, "--min-pops"), metavar="K")
    k.add_argument("--clear", action="store_true", help="back to the agents' default")

    ov = cmds.add_parser("override", parents=[write], help="let a PoP withdraw below K")
    ov.add_argument("service", type=_name)
    ov.add_argument("--pop", type=_name, required=True)
    ttl = ov.add_mutually_exclusive_group(required=True)
    ttl.add_argument("--ttl", type=_duration, metavar="DURATION", help="e.g. 10m")
    ttl.add_argument("--clear", action="store_true", help="end the override now")

    b = cmds.add_parser("budget", parents=[write], help="health withdraws per window, fleet-wide")
    slots = b.add_mutually_exclusive_group(required=True)
    slots.add_argument("--slots", type=_arg(int, 1, 100, "--slots"), metavar="B")
    slots.add_argument("--clear", action="store_true", help="back to the agents' default")
    b.add_argument("--window", type=_duration, default=300.0, metavar="DURATION")


def parser() -> argparse.ArgumentParser:
    """`anycast-agent fleet` on its own (tests, scripts)."""
    p = argparse.ArgumentParser(prog="anycast-agent fleet")
    add_fleet_arguments(p)
    return p
