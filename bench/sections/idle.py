"""Concurrency: N idle connections held through a subject; its memory per connection.

Owns: the idle section. Per subject, alone on the machine's attention: a fresh echo backend,
the subject, a warm-up of a few connections, then a baseline of its memory (RSS and PSS over all
its processes); client processes (`bench.peers.idle_client`, at most CLIENT_CHUNK connections each, so
no process nears the 20,000-fd limit) open N connections, each proven by a byte round trip;
memory is read with all of them held, after a second round trip on every connection; then the
clients close and memory is read again (what the subject gives back), and once more after a
second open/close cycle of N connections (growth from one cycle to the next is a leak).
N is `--idle-n` capped by what the subject can hold in one process: epollmux (1 worker) and
HAProxy (nbthread 1) hold two fds per connection under a 20,000-fd limit; sslh-select uses
select(), so FD_SETSIZE (1024) caps it near 500 connections whatever the limit.
Forking relays (sslh-fork, socat) would need a process per connection and are left out.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from bench.peers.backends import Echo
from bench.harness.context import Context, started
from bench.peers.idle_client import round_trip
from bench.harness.procs import HOST

SUBJECTS = ["epollmux-adaptive", "epollmux-splice", "haproxy", "sslh-select", "epollmux-sockmap"]
CLIENT_CHUNK = 4500
CAPS = {"epollmux-adaptive": (9000, "20,000 fds per process, 2 per connection (1 worker)"),
        "epollmux-splice": (9000, "20,000 fds per process, 2 per connection (1 worker)"),
        "epollmux-copy": (9000, "20,000 fds per process, 2 per connection (1 worker)"),
        "haproxy": (9000, "20,000 fds per process, 2 per connection (nbthread 1, maxconn 9000)"),
        "sslh-select": (500, "select(): FD_SETSIZE 1024, 2 fds per connection")}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Clients:
    """The client processes of one measurement, each ended by its PID."""

    def __init__(self, port: int, n: int, seconds: float):
        self.procs = []
        left = n
        while left > 0:
            chunk = min(CLIENT_CHUNK, left)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.peers.idle_client", HOST, str(port), str(chunk), str(seconds)],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1))
            left -= chunk

    def read_all(self, timeout: float) -> list[dict]:
        out = []
        end = time.monotonic() + timeout
        for p in self.procs:
            ready, _, _ = select.select([p.stdout], [], [], max(0.0, end - time.monotonic()))
            line = p.stdout.readline() if ready else ""
            out.append(json.loads(line) if line else {"ok": 0, "failed": 0, "error": "no answer"})
        return out

    def command(self, cmd: str) -> None:
        for p in self.procs:
            try:
                p.stdin.write(cmd + "\n")
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def stop(self) -> None:
        self.command("close")
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def sockstat_tcp() -> dict[str, int]:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()[1:]
                return {k: int(v) for k, v in zip(parts[::2], parts[1::2])}
    return {}


def warm_up(port: int, count: int = 16) -> int:
    import socket
    ok = 0
    for _ in range(count):
        try:
            with socket.create_connection((HOST, port), timeout=5) as s:
                ok += round_trip(s)
        except OSError:
            pass
    return ok


def measure(ctx: Context, name: str, n_wanted: int) -> dict:
    cap, cap_reason = CAPS.get(name, (n_wanted, ""))
    n = min(n_wanted, cap)
    res: dict = {"subject": name, "n": n, "cap": cap, "cap_reason": cap_reason}
    budget = max(10.0, n / 300)
    backend = Echo(ctx.tmpdir, ctx.ports.take()).start()
    try:
        with started(ctx, [name], backend.address) as running:
            if name not in running:
                return {**res, "error": ctx.start_errors.get(name, "did not start")}
            subject = running[name]
            res["warmup_ok"] = warm_up(subject.port)
            time.sleep(0.5)
            res["base"] = subject.memory()
            sock0 = sockstat_tcp()
            t0 = time.monotonic()
            clients = Clients(subject.port, n, budget)
            try:
                opened = clients.read_all(budget + 15)
                res["open_seconds"] = time.monotonic() - t0
                res["held"] = sum(o["ok"] for o in opened)
                res["open_failed"] = sum(o["failed"] for o in opened)
                time.sleep(1.0)
                clients.command("ping")
                pinged = clients.read_all(budget + 15)
                res["ping_ok"] = sum(o["ok"] for o in pinged)
                res["ping_failed"] = sum(o["failed"] for o in pinged)
                res["loaded"] = subject.memory()
                sock1 = sockstat_tcp()
                res["sockstat_tcp_delta"] = {k: sock1.get(k, 0) - sock0.get(k, 0) for k in sock1}
            finally:
                clients.stop()
            time.sleep(1.0)
            res["after_close"] = subject.memory()
            # a second open/close cycle: memory that keeps growing across cycles is a leak
            clients = Clients(subject.port, n, budget)
            try:
                res["held_2nd_cycle"] = sum(o["ok"] for o in clients.read_all(budget + 15))
            finally:
                clients.stop()
            time.sleep(1.0)
            res["after_2nd_close"] = subject.memory()
            res["alive"] = subject.alive()
    finally:
        backend.stop()
    held = res.get("ping_ok") or 0
    if held:
        for key in ("rss_kb", "pss_kb", "uss_kb"):
            res[f"{key[:3]}_per_conn_kb"] = (res["loaded"][key] - res["base"][key]) / held
    res["all_held"] = held == n
    return res


def run_section(ctx: Context) -> dict:
    opts = ctx.opts
    names = [n for n in opts.subjects if n in SUBJECTS]
    rows = []
    for name in names:
        if not ctx.has_time(20):
            rows.append({"subject": name, "error": "skipped: time budget"})
            continue
        row = measure(ctx, name, opts.idle_n)
        ctx.log(f"idle {name:16} held {row.get('ping_ok')}/{row.get('n')}: "
                f"RSS {row.get('rss_per_conn_kb', 0):.2f} KB/conn, PSS {row.get('pss_per_conn_kb', 0):.2f} KB/conn")
        rows.append(row)
    return {"section": "idle", "params": {"n": opts.idle_n, "subjects": names}, "summary": rows}
