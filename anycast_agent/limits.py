"""The agent's share of the unit's limits: its open-file budget against RLIMIT_NOFILE and its
place in the OOM killer's order (DESIGN §3.2a, R21)."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

from anycast_agent.config import AgentConfig

log = logging.getLogger("anycast_agent")

# stdio, ExaBGP's pipes, epoll, netlink, the canary, the state file, logs, and the control
# endpoint's listener and a few clients.
BASE_FDS = 64
PER_TARGET = {"http": 2, "tcp": 1, "dns": 1, "exec": 4}  # a kept socket; exec: pipes, pidfd
# The unit's OOMScoreAdjust= is every process's in it, ExaBGP's too; the agent raises its own so
# that it and the exec probes it forks (they inherit the value) are killed before ExaBGP.
OOM_SCORE_ADJ = Path("/proc/self/oom_score_adj")


def fd_budget(config: AgentConfig) -> tuple[int, int]:
    """(the soft RLIMIT_NOFILE, the most open files the config needs); logs a warning when
    short. Never exits: an exit would start ExaBGP's respawn count."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    needed = BASE_FDS + sum(PER_TARGET[t.kind] for s in config.services for t in s.targets)
    if limit != resource.RLIM_INFINITY and limit < needed:
        log.warning(
            "open-file limit %d is below the %d this config may need: raise LimitNOFILE "
            "(probes that hit it are checker faults, not failures, but they see nothing)",
            limit,
            needed,
        )
    return (limit if limit != resource.RLIM_INFINITY else 0), needed


def prefer_oom_kill(adj: int = 500, path: Path = OOM_SCORE_ADJ) -> str | None:
    """Raise this process's oom_score_adj to at least `adj`, never lower it; None, or why not.

    Out of memory (the unit's MemoryMax= or the host's), the kernel then kills the agent or an
    exec probe before ExaBGP: ExaBGP respawns its API process and keeps the sessions and routes,
    while ExaBGP's own death drops every session. Raising needs no privilege; a value already
    higher (an operator's) is kept. Never raises: a start must not fail over it."""
    try:
        if int(path.read_text().strip()) >= adj:
            return None
        path.write_text(f"{adj}\n")
    except (OSError, ValueError) as exc:
        return f"cannot raise the OOM score adjustment in {path} to {adj}: {exc}"
    return None
