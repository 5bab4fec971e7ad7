"""A stand-in ExaBGP API process: announces fixed routes, logs what ExaBGP says, idles until EOF.

Run by ExaBGP as `python3 stub_api.py [--log FILE] [--commands FILE]`, where FILE holds the
API commands to send, one a line (ExaBGP's `run` cannot quote arguments with spaces).
Standalone (no package imports): ExaBGP starts it with its own cwd and environment.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

DEFAULT_COMMANDS = ["announce route 192.0.2.10/32 next-hop self med 100"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", help="append every line read from ExaBGP to this file")
    parser.add_argument("--commands", help=f"commands to send (default: {DEFAULT_COMMANDS})")
    args = parser.parse_args()
    commands = DEFAULT_COMMANDS
    if args.commands:
        with open(args.commands) as f:
            commands = [line.strip() for line in f if line.strip()]
    for command in commands:
        sys.stdout.write(command + "\n")
        sys.stdout.flush()
    log = open(args.log, "a", buffering=1) if args.log else None  # noqa: SIM115

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # ExaBGP 4.2 ends its API processes with SIGTERM; 5.0 closes their stdin first.
        if log is not None:
            log.write("SIGTERM\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    # Reading continuously matters: unread acks fill the pipe and ExaBGP stalls.
    for line in sys.stdin:
        if log is not None:
            log.write(line)
    if log is not None:
        log.write("EOF\n")
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
