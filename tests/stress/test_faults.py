"""The stress suite (`make stress`), faults and load: connection churn, reload storm under a connect storm,
worker and supervisor kills, fd exhaustion.  Each test prints one line of figures and fails on
a misrouted client (its bytes at another route's backend), a traceback in the daemon's log, a worker death
the test did not cause, an fd or RSS leak, or a hang (a client waiting past CLIENT_TIMEOUT).  Loops are
bounded; EPOLLMUX_STRESS_SCALE (default 1) multiplies the client counts.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time

import pytest

from stress.harness import (CLIENT_TIMEOUT, Clock, fd_count, healthy, n, one_line, read_until_eof, recv_exact,
                            routed_config, run_clients, tagged_backends)
from support.daemon import proc_rss_kib
from support.net import connect, free_port, listening, wait_until

pytestmark = pytest.mark.timeout(900)


# --------------------------------------------------------------------------------- churn
def test_connection_churn_leaks_no_fd_and_no_memory(daemon, server):
    backends = tagged_backends(server, [b"C"])
    port = free_port()
    d = daemon().start(routed_config(port, backends, [("all", "any", b"C")], glob="relay = splice"), wait=port)
    worker = d.wait_workers(1)
    total = n(100000)
    payload = b"x" * 64

    def burst(count: int) -> None:
        def job(_):
            for _ in range(count):
                c = connect(port, timeout=CLIENT_TIMEOUT)
                c.sendall(payload)
                got = recv_exact(c, 1 + len(payload))
                assert got == b"C" + payload, got
                c.close()
        run_clients(job, range(16), workers=16)

    clock = Clock()
    burst(max(1, total // 10 // 16))                 # warm-up: pools, caches, allocator arenas
    wait_until(lambda: fd_count(worker[0]) <= 40, timeout=30, what="idle worker fds")
    fds0, rss0 = fd_count(worker[0]), proc_rss_kib(worker[0])
    burst(max(1, total * 9 // 10 // 16))
    healthy(d, worker, {worker[0]: fds0})
    rss1 = proc_rss_kib(worker[0])
    seconds = clock()
    one_line("churn", connections=total, seconds=seconds, per_second=total / seconds, fds_before=fds0,
             fds_after=fd_count(worker[0]), rss_kib_before=rss0, rss_kib_after=rss1)
    assert rss1 - rss0 < 16 * 1024, (rss0, rss1)


# --------------------------------------------------------------------------------- reload storm
def test_reload_storm_under_a_connect_storm_keeps_streams_byte_exact(daemon, server):
    backends = tagged_backends(server, [b"R"])
    port = free_port()
    d = daemon().start(routed_config(port, backends, [("all", "any", b"R")], glob="drain_timeout = 120")
                       .replace("workers = 1", "workers = 2"), wait=port)
    d.wait_workers(2)
    stop = threading.Event()
    results = {"streams": 0, "short": 0, "bytes": 0}
    lock = threading.Lock()

    def stream(seed: int) -> None:
        rng = random.Random(seed)
        data = rng.randbytes(rng.randrange(1 << 16, 1 << 20))
        c = connect(port, timeout=CLIENT_TIMEOUT)
        sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
        sender.start()
        got, how = read_until_eof(c, limit=len(data) + 2)
        sender.join(CLIENT_TIMEOUT)
        c.close()
        assert got == b"R" + data, (len(got), len(data), how)
        with lock:
            results["streams"] += 1
            results["bytes"] += len(data)

    def short(seed: int) -> None:
        while not stop.is_set():
            c = connect(port, timeout=CLIENT_TIMEOUT)
            c.sendall(b"ping")
            assert recv_exact(c, 5) == b"Rping"
            c.close()
            with lock:
                results["short"] += 1

    reloads = 15
    storm = threading.Thread(target=lambda: run_clients(short, range(4), workers=4))
    storm.start()
    streams = threading.Thread(target=lambda: run_clients(stream, range(n(60)), workers=8))
    errors = []
    streams.run = (lambda run: (lambda: _capture(run, errors)))(streams.run)
    storm.run = (lambda run: (lambda: _capture(run, errors)))(storm.run)
    streams.start()
    clock = Clock()
    for i in range(reloads):
        d.signal(signal.SIGHUP)
        d.wait_log("reloaded:", count=i + 1, timeout=60)
        time.sleep(0.3)
    streams.join(300)
    stop.set()
    storm.join(60)
    assert not errors, errors
    assert not streams.is_alive() and not storm.is_alive(), "a client hung"
    log = d.log_text()
    assert "Traceback" not in log, log[-4000:]
    one_line("reload-storm", reloads=reloads, seconds=clock(), **results)


def _capture(run, errors: list) -> None:
    try:
        run()
    except BaseException as exc:      # noqa: BLE001 - reported by the test thread
        errors.append(repr(exc)[:500])


# --------------------------------------------------------------------------------- worker kills
def test_worker_kills_are_replaced_and_clients_served(daemon, server):
    backends = tagged_backends(server, [b"K"])
    port = free_port()
    d = daemon().start(routed_config(port, backends, [("all", "any", b"K")]).replace("workers = 1", "workers = 2"),
                       wait=port)
    seen = set(d.wait_workers(2))
    clock = Clock()
    kills = 8
    served = 0
    for _ in range(kills):
        victim = random.choice(d.workers())
        os.kill(victim, signal.SIGKILL)
        seen.add(victim)
        d.wait_workers(2, timeout=30, exclude={victim})
        for _ in range(50):
            c = connect(port, timeout=CLIENT_TIMEOUT)
            c.sendall(b"k")
            assert recv_exact(c, 2) == b"Kk"
            c.close()
            served += 1
    log = d.log_text()
    assert "Traceback" not in log, log[-4000:]
    one_line("worker-kills", kills=kills, served_after=served, seconds=clock(), workers=len(d.workers()))


def test_supervisor_kills_release_the_port(daemon, server):
    """SIGKILL the supervisor while a client is connected: the orphaned workers stop being a destination at
    once (nothing listens, a new client is refused, not queued), and a new daemon binds the port."""
    backends = tagged_backends(server, [b"V"])
    port = free_port()
    clock = Clock()
    rounds, refused, released = 5, 0, []
    for _ in range(rounds):
        d = daemon().start(routed_config(port, backends, [("all", "any", b"V")]).replace("workers = 1", "workers = 2"),
                           wait=port)
        workers = d.wait_workers(2)
        held = connect(port, timeout=CLIENT_TIMEOUT)
        held.sendall(b"v")
        assert recv_exact(held, 2) == b"Vv"
        killed_at = time.monotonic()
        d.proc.kill()
        d.proc.wait(10)
        wait_until(lambda: not listening(port), timeout=10, what="the port released by the orphaned workers")
        released.append(time.monotonic() - killed_at)
        try:
            connect(port, timeout=2).close()
        except (ConnectionRefusedError, TimeoutError) as exc:
            refused += isinstance(exc, ConnectionRefusedError)
        held.close()
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and _alive(p) for p in workers), timeout=30,
                   what="the orphaned workers gone once their connection ended")
        assert "Traceback" not in d.log_text(), d.log_text()[-4000:]
    one_line("supervisor-kills", rounds=rounds, refused=refused, max_release_s=max(released), seconds=clock())
    assert refused == rounds


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------------- fd exhaustion
def test_fd_exhaustion_is_survived(daemon, server):
    backends = tagged_backends(server, [b"F"])
    port = free_port()
    d = daemon().start(routed_config(port, backends, [("all", "any", b"F")]), wait=port)
    worker = d.wait_workers(1)
    subprocess.run(["prlimit", f"--pid={worker[0]}", "--nofile=200:200"], check=True, timeout=10)
    fds = {worker[0]: fd_count(worker[0])}
    clock = Clock()
    held = []
    for _ in range(300):            # each served client takes two fds: the worker runs out near 95
        held.append(connect(port, timeout=CLIENT_TIMEOUT))
    wait_until(lambda: "out of file descriptors" in d.log_text(), timeout=30, what="EMFILE seen")
    cpu_busy = open(f"/proc/{worker[0]}/stat").read().rsplit(")", 1)[1].split()[11:13]
    time.sleep(1)
    cpu_after = open(f"/proc/{worker[0]}/stat").read().rsplit(")", 1)[1].split()[11:13]
    spun = sum(map(int, cpu_after)) - sum(map(int, cpu_busy))
    for c in held:
        c.close()
    figures = healthy(d, worker, fds)
    c = connect(port)
    c.sendall(b"f")
    assert recv_exact(c, 2) == b"Ff"
    c.close()
    one_line("fd-exhaustion", held=len(held), ticks_in_1s_while_exhausted=spun, seconds=clock(), health=figures)
    assert spun < 50, "the worker spins while out of fds"
