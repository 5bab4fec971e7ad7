"""Lab prerequisites: `require_lab` skips a lab test locally but fails it in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lab.bird import BIRD, BIRDC
from tests.lab.exabgp import ExabgpVersion, binary_env_var, exabgp_binary


def lab_missing(version: ExabgpVersion | None = None) -> list[str]:
    """What this machine lacks to run the lab (empty when everything is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    if shutil.which("ip") is None:
        missing.append("iproute2 `ip`")
    else:
        probe = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, check=False, stdin=subprocess.DEVNULL
        )
        if probe.returncode != 0:
            missing.append(f"`ip netns` ({probe.stderr.decode(errors='replace').strip()})")
    for binary in (BIRD, BIRDC):
        if not Path(binary).exists():
            missing.append(f"{binary} (apt-get install bird2)")
    versions = [version] if version else []
    for v in versions:
        path = exabgp_binary(v)
        if not os.access(path, os.X_OK):
            missing.append(f"ExaBGP {v} at {path} (or set {binary_env_var(v)})")
    return missing


def require_tool(name: str, package: str) -> str:
    """The path of the command `name`; skip the test without it, but in CI fail instead."""
    tool = shutil.which(name)
    if tool is None:
        reason = f"{name} not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return tool


def require_lab(version: ExabgpVersion | None = None) -> None:
    """Skip the test when the lab cannot run here; in CI (CI=true) fail instead, never skip."""
    missing = lab_missing(version)
    if not missing:
        return
    reason = "netns lab needs: " + "; ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
