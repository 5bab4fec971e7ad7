"""The store's write path alone, killed by itself at its Nth system call (R29 durability).

Run as `python store_child.py STATE_DIR N`: reads the intents (they must read), adds one drain,
saves, prints `acked K` once the save returned, and goes on, until the Nth call to os.write,
os.fsync or os.replace, where it SIGKILLs itself: in the middle of a copy, after a rename
before its directory is synced, between the two copies, anywhere.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from anycast_agent.core.intents import Drain, Intents
from anycast_agent.store import Store


def main() -> None:
    state_dir, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    calls = 0

    def counted(fn: Any) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kw)

        return wrapper

    os.write = counted(os.write)
    os.fsync = counted(os.fsync)
    os.replace = counted(os.replace)
    store = Store(state_dir)
    while True:
        intents = store.load()
        k = len(intents.drains) + 1
        drains = {**intents.drains, f"s{k}": Drain(f"s{k}", "r", "op", since=float(k))}
        store.save(Intents(drains=drains))
        sys.stdout.write(f"acked {k}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
