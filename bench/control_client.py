"""The control-plane bench's HTTP client, run inside the bench namespace (standard library only).

`seq PATH COUNT GAP_S [ACCEPT]`: COUNT GETs one after the other, GAP_S apart.
`scrapers K PERIOD_S DURATION_S PATH [ACCEPT]`: K threads GET PATH at the same instants, every
PERIOD_S, for DURATION_S (K Prometheus servers whose scrapes line up).
Each request is a fresh connection (`Connection: close`), timed from connect to the last byte;
anything but a 200 within TIMEOUT_S is counted as an error (and has no latency). Prints one
JSON object: latencies in seconds, errors, the largest body, and the monotonic start and end.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

HOST = "127.0.0.1"
PORT = 9179
TIMEOUT_S = 30.0


def get(path: str, accept: str) -> tuple[float, int]:
    """One GET: its latency and the body's size; raises unless the answer is 200."""
    head = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nConnection: close\r\n"
    if accept:
        head += f"Accept: {accept}\r\n"
    started = time.monotonic()
    with socket.create_connection((HOST, PORT), TIMEOUT_S) as s:
        s.sendall((head + "\r\n").encode())
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    took = time.monotonic() - started
    reply = b"".join(chunks)
    status_line, _, rest = reply.partition(b"\r\n")
    if b" 200 " not in status_line:
        raise RuntimeError(f"GET {path}: {status_line.decode(errors='replace')}: {rest[-300:]!r}")
    return took, len(reply) - reply.index(b"\r\n\r\n") - 4


def sequential(path: str, count: int, gap_s: float, accept: str) -> dict[str, object]:
    began = time.monotonic()
    latencies: list[float] = []
    errors: list[str] = []
    size = 0
    for _ in range(count):
        try:
            took, got = get(path, accept)
        except (OSError, RuntimeError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        else:
            latencies.append(took)
            size = max(size, got)
        time.sleep(gap_s)
    return {
        "latency_s": latencies,
        "errors": errors,
        "bytes": size,
        "began": began,
        "ended": time.monotonic(),
    }


def scrapers(
    k: int, period_s: float, duration_s: float, path: str, accept: str
) -> dict[str, object]:
    began = time.monotonic() + 0.5  # every thread is waiting by then
    rounds = int(duration_s / period_s)
    latencies: list[float] = []
    sizes: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def scrape() -> None:
        for i in range(rounds):
            time.sleep(max(0.0, began + i * period_s - time.monotonic()))
            try:
                took, size = get(path, accept)
            except (OSError, RuntimeError) as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append(took)
                sizes.append(size)

    threads = [threading.Thread(target=scrape) for _ in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "latency_s": latencies,
        "errors": errors,
        "bytes": max(sizes, default=0),
        "began": began,
        "ended": time.monotonic(),
    }


def main(argv: list[str]) -> int:
    match argv:
        case ["seq", path, count, gap, *accept]:
            out = sequential(path, int(count), float(gap), "".join(accept))
        case ["scrapers", k, period, duration, path, *accept]:
            out = scrapers(int(k), float(period), float(duration), path, "".join(accept))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
