"""Operator intents on disk (state_dir/state.json), written atomically with a previous copy kept."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from anycast_agent.core.intents import Drain, Intents, MedOverride
from anycast_agent.state import atomic_write

log = logging.getLogger(__name__)

STATE = "state.json"
PREVIOUS = "state.json.prev"
FORMAT = 1


class Unreadable(Exception):
    """The state file and its previous copy exist but neither can be read."""


def encode(intents: Intents) -> bytes:
    data = {
        "format": FORMAT,
        "drains": [asdict(d) for d in intents.drains.values()],
        "meds": [asdict(m) for m in intents.meds.values()],
        "ramp_holds": sorted(intents.ramp_holds),
    }
    return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


_TYPES: dict[str, tuple[type, ...]] = {
    "service": (str,),
    "reason": (str,),
    "author": (str,),
    "since": (int, float),
    "expires": (int, float, type(None)),
    "med": (int,),
}


def _checked(item: object, fields: tuple[str, ...]) -> dict[str, Any]:
    """One drain or override, every field present and of its type (a hand-edited file that
    parses but holds a string where a time belongs must not crash the agent later)."""
    if not isinstance(item, dict) or set(item) != set(fields):
        raise ValueError(f"expected the fields {sorted(fields)}, got {item!r}")
    for name in fields:
        value = item[name]
        if not isinstance(value, _TYPES[name]) or isinstance(value, bool):
            raise ValueError(f"{name}: {value!r} is not a {_TYPES[name][0].__name__}")
    if "med" in item and not 0 <= item["med"] <= 0xFFFFFFFF:
        raise ValueError(f"med: {item['med']!r} is outside 0..4294967295")
    return item


def decode(raw: bytes) -> Intents:
    data: Any = json.loads(raw)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not an anycast-agent state file of format {FORMAT}")
    drain_fields = ("service", "reason", "author", "since", "expires")
    med_fields = ("service", "med", "reason", "author", "since", "expires")
    drains = [Drain(**_checked(d, drain_fields)) for d in data.get("drains", [])]
    meds = [MedOverride(**_checked(m, med_fields)) for m in data.get("meds", [])]
    holds = data.get("ramp_holds", [])
    if not all(isinstance(h, str) for h in holds):
        raise ValueError("ramp_holds must be service names")
    return Intents(
        drains={d.service: d for d in drains},
        meds={m.service: m for m in meds},
        ramp_holds=frozenset(holds),
    )


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE
        self.previous = state_dir / PREVIOUS

    def load(self) -> Intents:
        """The persisted intents; none on first boot; Unreadable when no copy can be read.

        The previous copy stands in only for a current file that exists but cannot be read:
        an operator who deletes state.json to reset the intents gets no intents.
        """
        if not self.path.exists():
            return Intents()
        problems = []
        for path in (self.path, self.previous):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}")
                continue
            try:
                intents = decode(raw)
            except (ValueError, TypeError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            if problems:
                log.error("state file unreadable, using the previous copy: %s", "; ".join(problems))
            return intents
        if problems:
            raise Unreadable("; ".join(problems))
        return Intents()

    def save(self, intents: Intents) -> None:
        """Keep the current file as the previous copy (if it reads), then write the new one."""
        try:
            current = self.path.read_bytes()
            decode(current)
        except (OSError, ValueError, TypeError):
            pass
        else:
            atomic_write(self.previous, current)
        atomic_write(self.path, encode(intents))

    def save_or_error(self, intents: Intents) -> str:
        """`save`, answering "" when the intents are on disk, else why not."""
        try:
            self.save(intents)
        except OSError as exc:
            return f"{self.path}: {exc.strerror or exc}"
        return ""

    def load_or_drain(self) -> tuple[Intents, bool]:
        """The persisted intents, logged; (no intents, True) when no copy can be read: the
        core then starts with the whole PoP drained ("state unreadable")."""
        try:
            intents = self.load()
        except Unreadable as exc:
            log.critical("%s: every service starts drained (state unreadable)", exc)
            return Intents(), True
        if intents.drains or intents.meds:
            log.info(
                "operator intents: %s",
                "; ".join(
                    [f"drain {d.service} ({d.reason})" for d in intents.drains.values()]
                    + [f"med {m.service}={m.med}" for m in intents.meds.values()]
                ),
            )
        return intents, False
