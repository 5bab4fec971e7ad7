"""Files the agent keeps in state_dir: the last-good config and the start counter (DESIGN §7)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

LAST_GOOD = "last-good-config.yaml"
STARTS = "starts.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_last_good(state_dir: Path, config_text: bytes) -> None:
    """Keep the config that just started successfully, for `run` to fall back to."""
    target = state_dir / LAST_GOOD
    try:
        if target.exists() and target.read_bytes() == config_text:
            return
        atomic_write(target, config_text)
    except OSError as exc:
        log.warning("cannot keep the last-good config in %s: %s", state_dir, exc)


def count_start(state_dir: Path) -> int:
    """Count this start (respawns included); returns the total, or 0 if state_dir is unusable."""
    path = state_dir / STARTS
    try:
        starts = int(json.loads(path.read_text()).get("starts", 0))
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):
        starts = 0
    starts += 1
    try:
        atomic_write(path, json.dumps({"starts": starts}).encode())
    except OSError as exc:
        log.warning("cannot count starts in %s: %s", state_dir, exc)
        return 0
    return starts
