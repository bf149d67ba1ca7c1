"""Holds idle connections for the idle section: `python3 -m bench.peers.idle_client HOST PORT N SECONDS`.

Opens up to N connections one after another, each proven by a one-byte round trip (send b"x",
read it back), within SECONDS; stops early after 50 failures in a row. Prints one JSON line
{"ok", "failed", "seconds"}, then obeys commands on stdin, one per line:
`ping` (round-trip a byte on every held connection, print {"ok", "failed"}) and `close`
(close everything and exit). EOF on stdin also closes and exits.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def open_all(host: str, port: int, n: int, seconds: float) -> tuple[list[socket.socket], int]:
    held, failed, in_a_row = [], 0, 0
    end = time.monotonic() + seconds
    while len(held) < n and time.monotonic() < end and in_a_row < 50:
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError:
            failed += 1
            in_a_row += 1
            continue
        if round_trip(s):
            held.append(s)
            in_a_row = 0
        else:
            s.close()
            failed += 1
            in_a_row += 1
    return held, failed


def round_trip(s: socket.socket) -> bool:
    try:
        s.sendall(b"x")
        return s.recv(1) == b"x"
    except OSError:
        return False


def main(host: str, port: int, n: int, seconds: float) -> None:
    t0 = time.monotonic()
    held, failed = open_all(host, port, n, seconds)
    print(json.dumps({"ok": len(held), "failed": failed, "seconds": time.monotonic() - t0}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "ping":
            ok = sum(round_trip(s) for s in held)
            print(json.dumps({"ok": ok, "failed": len(held) - ok}), flush=True)
        elif cmd == "close":
            break
    for s in held:
        s.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
