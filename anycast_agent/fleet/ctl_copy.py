"""The agent's own copy of the fleet's `ctl/` keys (FLEET.md §3.4): written on every change
seen in etcd, read at start, so a restart while etcd is unreachable keeps the fleet's drains
and ramps in force instead of forgetting them."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from anycast_agent.state import atomic_write

log = logging.getLogger("anycast_agent.fleet")

CTL_COPY = "fleet-ctl.json"
FORMAT = 1


def save(state_dir: Path, ctl: Mapping[str, bytes], revision: int) -> str:
    """Write the copy; "" when written, else why not (the caller logs it and goes on)."""
    data = {
        "format": FORMAT,
        "revision": revision,
        "ctl": {k: base64.b64encode(v).decode() for k, v in sorted(ctl.items())},
    }
    try:
        atomic_write(state_dir / CTL_COPY, json.dumps(data, indent=1).encode() + b"\n")
    except OSError as exc:
        return f"cannot write {state_dir / CTL_COPY}: {exc.strerror or exc}"
    return ""


def load(state_dir: Path) -> tuple[dict[str, bytes], int] | str:
    """The copy's keys and revision; ({}, 0) when there is none (no fleet yet); else why it
    cannot be read."""
    path = state_dir / CTL_COPY
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, 0
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a copy of format {FORMAT}")
        revision, ctl = data["revision"], data["ctl"]
        if not isinstance(revision, int) or isinstance(revision, bool) or not isinstance(ctl, dict):
            raise ValueError("revision must be an integer and ctl an object")
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in ctl.items()}
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
        return f"{path} is unreadable: {exc}"
    return keys, revision
