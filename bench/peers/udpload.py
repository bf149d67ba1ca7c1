"""UDP load for the bench: an echo backend and a paced many-flow client, each a program of its own.

`python -m bench.peers.udpload echo PORT`: answers every datagram to its sender (8 MiB receive buffer).
`python -m bench.peers.udpload flows HOST PORT FLOWS RATE SIZE SECONDS`: opens FLOWS sockets (one flow each),
proves each with a round trip, then sends RATE datagrams/s of SIZE bytes in all, round-robin over the flows,
for SECONDS, reading the echoes as they come; prints one JSON line: sent, received (echoes), seconds, the
flows proven. `python -m bench.peers.udpload hold HOST PORT FLOWS`: proves FLOWS flows, prints `held N`,
then waits for a line on stdin (the bench reads the subject's memory meanwhile).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

BUF = 8 << 20


def _sock() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, option, BUF)
            break
        except OSError:
            continue
    return s


def echo(port: int) -> None:
    s = _sock()
    s.bind(("127.0.0.1", port))
    print("ready", flush=True)
    recvfrom, sendto = s.recvfrom, s.sendto
    while True:
        data, peer = recvfrom(65535)
        try:
            sendto(data, peer)
        except OSError:
            pass


def _open(host: str, port: int, flows: int, timeout: float = 10.0) -> list[socket.socket]:
    socks = []
    for _ in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.setblocking(False)
        socks.append(s)
    waiting = {s.fileno(): s for s in socks}
    poller = select.epoll()
    for s in socks:
        poller.register(s.fileno(), select.EPOLLIN)
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while waiting and time.monotonic() < deadline:
        if time.monotonic() >= next_send:          # (re)send the probe of every flow not proven yet
            for s in waiting.values():
                try:
                    s.send(b"hello")
                except OSError:
                    pass
            next_send = time.monotonic() + 1.0
        for fd, _ in poller.poll(0.05):
            s = waiting.pop(fd, None)
            if s is not None:
                try:
                    while True:
                        s.recv(65535)
                except OSError:
                    pass
    poller.close()
    return [s for s in socks if s.fileno() not in waiting]


def flows(host: str, port: int, n: int, rate: float, size: int, seconds: float) -> None:
    socks = _open(host, port, n)
    payload = b"x" * size
    poller = select.epoll()
    for s in socks:
        poller.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s for s in socks}
    sent = received = 0
    t0 = time.monotonic()
    end = t0 + seconds
    i = 0
    batch = max(1, int(rate / 1000))             # send in bursts of 1 ms worth
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - t0) * rate) - sent
        for _ in range(min(due, batch * 4)):
            try:
                socks[i % len(socks)].send(payload)
                sent += 1
            except OSError:
                sent += 1                      # counted: a full local buffer is loss too
            i += 1
        for fd, _ in poller.poll(0 if due > 0 else 0.0005):
            s = by_fd[fd]
            try:
                while True:
                    s.recv(65535)
                    received += 1
            except OSError:
                pass
    drain_end = time.monotonic() + 1.0           # late echoes
    while time.monotonic() < drain_end:
        for fd, _ in poller.poll(0.05):
            s = by_fd[fd]
            try:
                while True:
                    s.recv(65535)
                    received += 1
            except OSError:
                pass
    print(json.dumps({"flows": len(socks), "sent": sent, "received": received, "seconds": seconds}), flush=True)


def hold(host: str, port: int, n: int) -> None:
    socks = _open(host, port, n, timeout=30.0)
    print(f"held {len(socks)}", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "echo":
        echo(int(args[0]))
    elif mode == "flows":
        flows(args[0], int(args[1]), int(args[2]), float(args[3]), int(args[4]), float(args[5]))
    elif mode == "hold":
        hold(args[0], int(args[1]), int(args[2]))
