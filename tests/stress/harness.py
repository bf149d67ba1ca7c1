"""Shared pieces of the stress suite: tagged backends, a bounded client pool, and the health check every
stress test ends with (no traceback in the daemon's log, no worker death the test did not cause, fds back to
where they were, RSS bounded)."""

from __future__ import annotations

import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

from support.daemon import proc_rss_kib
from support.net import Server, wait_until

CLIENT_TIMEOUT = 20.0          # a client that waits longer than this for the daemon counts as a hang
SCALE = float(os.environ.get("EPOLLMUX_STRESS_SCALE", "1"))
LINGER_RST = struct.pack("ii", 1, 0)


def n(count: int) -> int:
    """A client count scaled by EPOLLMUX_STRESS_SCALE."""
    return max(1, int(count * SCALE))


def routed_config(port: int, backends: dict, probes, *, glob: str = "", listen_extra: str = "") -> str:
    """One listener, one route per (name, probe, tag) whose backend is backends[tag]."""
    routes = "".join(f"  [[{name}]]\n  probe = {probe}\n  backend = 127.0.0.1:{backends[tag].port}\n"
                     for (name, probe, tag) in probes)
    return (f"[global]\nworkers = 1\nprobe_timeout = 30\n{glob}\n[listen]\n  [[main]]\n"
            f"  address = 127.0.0.1:{port}\n{listen_extra}[routes]\n{routes}")


def tagged(tag: bytes):
    """A backend handler that sends its tag, then echoes until EOF, then closes."""
    def handle(sock: socket.socket) -> None:
        try:
            sock.sendall(tag)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
    return handle


def tagged_backends(server, tags) -> dict[bytes, Server]:
    return {tag: server(tagged(tag), backlog=4096) for tag in tags}


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_clients(job, items, workers: int = 32) -> list:
    """job(item) for every item on a bounded pool; results in order (exceptions propagate)."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(job, items))


def read_until_eof(sock: socket.socket, limit: int = 1 << 22) -> tuple[bytes, str]:
    """Everything until EOF or reset; how it ended ("eof" or "reset")."""
    sock.settimeout(CLIENT_TIMEOUT)
    chunks, total = [], 0
    try:
        while total < limit:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks), "eof"
            chunks.append(data)
            total += len(data)
    except ConnectionResetError:
        return b"".join(chunks), "reset"
    raise AssertionError("more bytes than expected")


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """size bytes, or fewer if the peer ended first (MSG_WAITALL returns early on a socket with a timeout)."""
    chunks, got = [], 0
    while got < size:
        data = sock.recv(size - got)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def healthy(d, workers_before: list[int], fds_before: dict[int, int] | None = None, kills: int = 0) -> str:
    """Assert no traceback, no unexpected worker death, fds back to their count; returns a figures string."""
    log = d.log_text()
    assert "Traceback" not in log, log[-4000:]
    assert d.proc.poll() is None, "the supervisor died"
    now = d.workers()
    if not kills:
        assert now == workers_before, (workers_before, now, log[-3000:])
    if fds_before:
        for pid, before in fds_before.items():
            wait_until(lambda: fd_count(pid) <= before + 2, timeout=30, what=f"worker {pid} fds back to {before}")
    rss = sum(proc_rss_kib(p) for p in now)
    return f"workers={len(now)} rss_kib={rss}"


def one_line(name: str, **figures) -> None:
    """The one line of figures a stress test prints (make stress collects them)."""
    text = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    line = f"STRESS {name}: {text}"
    print(line)
    out = os.environ.get("EPOLLMUX_STRESS_OUT")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


class Clock:
    def __init__(self):
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start

