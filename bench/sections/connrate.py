"""Connection rate and latency: nginx behind each subject, loaded by wrk; one-connection latency.

Owns: the connrate section. Three measurements per subject, all against one nginx
(worker_processes 1, access_log off, a 34-byte static body):
- `close`: wrk with `Connection: close`, so every request is a new TCP connection through the
  relay (and a new backend connection): requests/s = new connections/s, p50/p99, errors;
- `keepalive`: the same wrk load on persistent connections (pure relaying of small messages);
- `unloaded`: a Python client opens one connection at a time, sends an HTTP/1.0 request and
  reads to EOF; connect-to-EOF time over `--latency-count` sequential connections, p50/p99.
The subject's CPU over each wrk run gives requests per proxy CPU-second.
"""

from __future__ import annotations

import socket
import time

from bench.harness import stats
from bench.peers.backends import Nginx
from bench.peers.loadgen import wrk
from bench.harness.context import Context, started
from bench.harness.procs import HOST, OtherLoad

SUBJECTS = ["direct", "epollmux-adaptive", "epollmux-splice", "epollmux-copy", "haproxy", "sslh-select", "sslh-fork", "socat",
            "epollmux-splice-2w", "epollmux-adaptive-2w", "haproxy-2t"]
REFERENCE = "haproxy"
MODES = ("close", "keepalive")
REQUEST = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"

def unloaded(port: int, count: int, budget: float) -> dict:
    """connect-to-EOF times (ms) of `count` sequential connections, bounded by `budget` seconds."""
    times, failures = [], 0
    end = time.monotonic() + budget
    for _ in range(count):
        if time.monotonic() > end:
            break
        t0 = time.perf_counter()
        try:
            with socket.create_connection((HOST, port), timeout=5) as s:
                s.sendall(REQUEST)
                got = 0
                while chunk := s.recv(65536):
                    got += len(chunk)
            if not got:
                raise OSError("empty answer")
        except OSError:
            failures += 1
            continue
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"count": len(times), "failures": failures,
            "p50_ms": stats.percentile(times, 50), "p99_ms": stats.percentile(times, 99),
            "mean_ms": sum(times) / len(times) if times else None}


def run_section(ctx: Context) -> dict:
    opts = ctx.opts
    names = [n for n in opts.subjects if n in SUBJECTS]
    seconds = opts.rate_seconds
    samples = []
    backend = Nginx(ctx.tmpdir, ctx.ports.take()).start()
    try:
        with started(ctx, names, backend.address) as running:
            order = [n for n in names if n in running]
            for rep in range(opts.repeat):
                rotated = order[rep % len(order):] + order[:rep % len(order)] if order else []
                for mode in MODES + ("unloaded",):
                    for name in rotated:
                        subject = running[name]
                        if not ctx.has_time(seconds + 5):
                            samples.append({"subject": name, "mode": mode, "rep": rep,
                                            "error": "skipped: time budget"})
                            continue
                        other = OtherLoad(backend.proc.pid)
                        cpu0, user0 = subject.cpu(), subject.cpu_user()
                        if mode == "unloaded":
                            res = unloaded(subject.port, opts.latency_count, budget=seconds * 3)
                        else:
                            res = wrk(subject.port, seconds, opts.rate_connections, mode == "close")
                        cpu = subject.cpu() - cpu0
                        res["other_cpu_s"] = other.seconds(cpu)
                        if subject.pid and "rps" in res and cpu > 0:
                            res["cpu_s"] = cpu
                            res["user_share"] = (subject.cpu_user() - user0) / cpu
                            res["req_per_cpu_s"] = res["requests"] / cpu if "requests" in res else None
                        if not subject.alive():
                            res["error"] = res.get("error", "") + " subject died"
                        res.update(subject=name, mode=mode, rep=rep)
                        samples.append(res)
                        ctx.log(f"connrate {name:16} {mode:9} rep={rep}: " + describe(res))
                        time.sleep(0.2)
    finally:
        backend.stop()
    return {"section": "connrate",
            "params": {"seconds": seconds, "connections": opts.rate_connections,
                       "latency_count": opts.latency_count, "repeat": opts.repeat, "subjects": names,
                       "wrk_threads": 1},
            "samples": samples, "summary": summarize(names, samples)}


def describe(res: dict) -> str:
    if "rps" in res:
        return f"{res['rps']:.0f} req/s p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms errors {res['errors']}"
    if "p50_ms" in res and res["p50_ms"] is not None:
        return f"p50 {res['p50_ms']:.3f} ms p99 {res['p99_ms']:.3f} ms ({res['count']} ok, {res['failures']} failed)"
    return f"ERROR {res.get('error', res)}"


def summarize(names: list[str], samples: list[dict]) -> list[dict]:
    rows = []
    for name in names:
        row = {"subject": name}
        for mode in MODES:
            ok = [s for s in samples if s["subject"] == name and s["mode"] == mode and "rps" in s]
            row[mode] = {"rps": stats.summary([s["rps"] for s in ok]),
                         "p50_ms": stats.summary([s["p50_ms"] for s in ok]),
                         "p99_ms": stats.summary([s["p99_ms"] for s in ok]),
                         "errors": sum(s["errors"] for s in ok),
                         "req_per_cpu_s": stats.summary([s.get("req_per_cpu_s") for s in ok]),
                         "user_share": stats.summary([s.get("user_share") for s in ok]),
                         "other_cpu_s": stats.summary([s.get("other_cpu_s") for s in ok])}
        ok = [s for s in samples if s["subject"] == name and s["mode"] == "unloaded" and s.get("p50_ms")]
        row["unloaded"] = {"p50_ms": stats.summary([s["p50_ms"] for s in ok]),
                           "p99_ms": stats.summary([s["p99_ms"] for s in ok]),
                           "failures": sum(s["failures"] for s in ok)}
        rows.append(row)
    ref = next((r for r in rows if r["subject"] == REFERENCE), None)
    for row in rows:
        for mode in MODES:
            row[mode]["rps_vs_ref"] = stats.ratio(row[mode]["rps"], ref[mode]["rps"]) if ref else None
    return rows
