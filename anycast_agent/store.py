"""Operator intents on disk (DESIGN §7): state_dir/state.json and the same content in
state.json.prev, each written atomically, so either copy alone holds every accepted intent."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from anycast_agent.core.intents import Drain, Intents, MedOverride, SessionDrain
from anycast_agent.state import atomic_write

log = logging.getLogger(__name__)

STATE = "state.json"
PREVIOUS = "state.json.prev"
FORMAT = 1


class Unreadable(Exception):
    """No copy of the state file can be read, though one exists: "state unreadable"."""


def encode(intents: Intents) -> bytes:
    data = {
        "format": FORMAT,
        # `intents.stopping` (the unit's drain for a stop) is never written: the next start
        # must not be drained.
        "drains": [asdict(d) for d in intents.drains.values()],
        "meds": [asdict(m) for m in intents.meds.values()],
        "sessions": [asdict(d) for d in intents.sessions.values()],
        "ramp_holds": sorted(intents.ramp_holds),
    }
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number this file may hold")


_TYPES: dict[str, tuple[type, ...]] = {
    "service": (str,),
    "scope": (str,),
    "neighbor": (str,),
    "reason": (str,),
    "author": (str,),
    "since": (int, float),
    "expires": (int, float, type(None)),
    "med": (int,),
    "override_fleet": (bool,),
}


def _checked(item: object, fields: tuple[str, ...]) -> dict[str, Any]:
    """One drain or override, every field present and of its exact type: a hand-edited file
    that parses but holds a string where a time belongs is unreadable, never coerced."""
    if not isinstance(item, dict) or set(item) != set(fields):
        raise ValueError(f"expected the fields {sorted(fields)}, got {item!r}")
    for name in fields:
        value = item[name]
        if not isinstance(value, _TYPES[name]) or (
            isinstance(value, bool) and bool not in _TYPES[name]
        ):
            raise ValueError(f"{name}: {value!r} is not a {_TYPES[name][0].__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: {value!r} is not a finite time")
    if "med" in item and not 0 <= item["med"] <= 0xFFFFFFFF:
        raise ValueError(f"med: {item['med']!r} is outside 0..4294967295")
    return item


def _has(item: object, field: str) -> bool:
    return isinstance(item, dict) and field in item


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def decode(raw: bytes) -> Intents:
    data: Any = json.loads(raw, parse_constant=_no_constant)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not an anycast-agent state file of format {FORMAT}")
    unknown = set(data) - {"format", "drains", "meds", "ramp_holds", "sessions"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    drain_fields = ("service", "reason", "author", "since", "expires")
    med_fields = ("service", "med", "reason", "author", "since", "expires")
    # Files written before `override_fleet` existed hold drains without it.
    drains = [
        Drain(
            **_checked(
                d, (*drain_fields, "override_fleet") if _has(d, "override_fleet") else drain_fields
            )
        )
        for d in _list(data, "drains")
    ]
    meds = [MedOverride(**_checked(m, med_fields)) for m in _list(data, "meds")]
    session_fields = ("scope", "neighbor", "reason", "author", "since", "expires")
    sessions = [SessionDrain(**_checked(d, session_fields)) for d in _list(data, "sessions")]
    holds = _list(data, "ramp_holds")
    if not all(isinstance(h, str) for h in holds):
        raise ValueError("ramp_holds must be service names")
    return Intents(
        drains={d.service: d for d in drains},
        meds={m.service: m for m in meds},
        ramp_holds=frozenset(holds),
        sessions={(d.scope, d.neighbor): d for d in sessions},
    )


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE
        self.previous = state_dir / PREVIOUS

    def load(self) -> Intents:
        """The persisted intents: from state.json, else from state.json.prev (missing or
        unreadable alike); none when neither exists (first boot); Unreadable when a copy
        exists and none can be read."""
        problems = []
        for path in (self.path, self.previous):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
                continue
            try:
                intents = decode(raw)
            except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            if path == self.previous:
                why = "; ".join(problems) or f"{self.path} is missing"
                log.error("state file unreadable (%s): using its copy %s", why, self.previous)
            return intents
        if problems:
            raise Unreadable("; ".join(problems))
        return Intents()

    def save(self, intents: Intents) -> None:
        """Both copies, one after the other, each atomically: a crash at any point leaves at
        least one copy holding either the old or the new intents, whole."""
        data = encode(intents)
        atomic_write(self.path, data)
        atomic_write(self.previous, data)

    def save_or_error(self, intents: Intents) -> str:
        """`save`, answering "" when the intents are on disk, else why not."""
        try:
            self.save(intents)
        except OSError as exc:
            return f"{self.path}: {exc.strerror or exc}"
        return ""

    def load_or_unreadable(self) -> tuple[Intents, str]:
        """The persisted intents, logged; (no intents, why) when no copy can be read."""
        try:
            intents = self.load()
        except Unreadable as exc:
            log.critical(
                "state unreadable (%s): keeping what ExaBGP holds, de-preferred, announcing "
                "nothing new, until `anycast-agent state reset --reason ...`",
                exc,
            )
            return Intents(), str(exc)
        if intents.drains or intents.meds:
            log.info(
                "operator intents: %s",
                "; ".join(
                    [f"drain {d.service} ({d.reason})" for d in intents.drains.values()]
                    + [f"med {m.service}={m.med}" for m in intents.meds.values()]
                ),
            )
        return intents, ""
