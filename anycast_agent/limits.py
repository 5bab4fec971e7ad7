"""The open-file budget: what the config needs against RLIMIT_NOFILE (DESIGN §3.2a, R21)."""

from __future__ import annotations

import logging
import resource

from anycast_agent.config import AgentConfig

log = logging.getLogger("anycast_agent")

# stdio, ExaBGP's pipes, epoll, netlink, the canary, the state file, logs, and the control
# endpoint's listener and a few clients.
BASE_FDS = 64
PER_TARGET = {"http": 2, "tcp": 1, "dns": 1, "exec": 4}  # a kept socket; exec: pipes, pidfd


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
