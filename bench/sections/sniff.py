"""Sniffing: what a probe decision costs, and SNI routing under connection load.

Owns: the sniff section. Two parts:
- `decision`: `python3 -m bench.tools.sniffcost` in a fresh interpreter: µs per `sniff.decide()` over the
  example config's route table (ssh, tls with `sni`, http, any) for real first flights (a TLS
  ClientHello, an SSH banner, ...) and per `parse_client_hello()` alone;
- `rate`: new TLS connections per second through each subject to one nginx that terminates TLS 1.3
  itself (ECDSA P-256, session tickets on, as nginx ships): wrk over https with `Connection: close`,
  sending SNI `localhost`. epollmux-sni and haproxy-sni route by that SNI (passthrough); epollmux-splice
  and haproxy forward everything unsniffed (`probe = any`, plain TCP mode), so the difference between
  each pair is what inspecting the ClientHello costs in place. direct = wrk to nginx's TLS port.
  Per run: requests/s (= connections/s), p50/p99, errors, and the subject's CPU per connection.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from bench.peers import certs, tlsload
from bench.harness import stats
from bench.peers.backends import Nginx
from bench.peers.loadgen import wrk
from bench.harness.context import Context, started
from bench.harness.procs import HOST, OtherLoad, run
from bench.peers.subjects import ALL, REPO, ROUTERS, log_summary

SUBJECTS = ["direct", "epollmux-splice", "epollmux-sni", "haproxy", "haproxy-sni"]
REFERENCE = "haproxy-sni"
PAIRS = {"epollmux-sni": "epollmux-splice", "haproxy-sni": "haproxy"}   # router -> its unsniffed self


def sni_name() -> str:
    """The name wrk sends as SNI: the URL's host. `localhost` if it resolves to 127.0.0.1 here (wrk tries
    each address in turn), else the IP literal (then the SNI sent is "127.0.0.1")."""
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)}
    except OSError:
        addrs = set()
    return "localhost" if HOST in addrs else HOST


def decision_cost(repeat: int, seconds: float) -> dict:
    try:
        out = run([sys.executable, "-m", "bench.tools.sniffcost", "--repeat", str(repeat), "--seconds", str(seconds)],
                  timeout=120, cwd=REPO)
        doc = json.loads(out.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return {"error": f"bench.tools.sniffcost failed: {exc}"}
    for case in doc["cases"]:
        case["summary"] = stats.summary(case["us"])
    return doc


def run_section(ctx: Context) -> dict:
    opts = ctx.opts
    names = [n for n in opts.subjects if n in SUBJECTS]
    seconds = opts.rate_seconds
    ctx.log("sniff: decision cost (bench.tools.sniffcost)")
    decision = decision_cost(3 if opts.quick else 7, 0.1 if opts.quick else 0.2)
    samples, checks, health = [], {}, {}
    server_name = sni_name()
    cert = certs.make(ctx.tmpdir, "ecdsa")
    backend = Nginx(ctx.tmpdir, ctx.ports.take(), tls_port=ctx.ports.take(), cert=cert.pair).start()

    def make(name, port):
        if name in ROUTERS:
            return ROUTERS[name](ctx.tmpdir, port, backend.tls_address, plain=backend.address, sni=server_name)
        return ALL[name](ctx.tmpdir, port, backend.tls_address)

    try:
        with started(ctx, names, backend.tls_address, make=make) as running:
            order = [n for n in names if n in running]
            for name in order:
                checks[name] = tlsload.check(running[name].port, server_name)
                health[name] = {"rss_kb_start": running[name].memory()["rss_kb"]}
            for rep in range(opts.repeat):
                rotated = order[rep % len(order):] + order[:rep % len(order)] if order else []
                for name in rotated:
                    if not ctx.has_time(seconds + 5):
                        samples.append({"subject": name, "rep": rep, "error": "skipped: time budget"})
                        continue
                    res = measure(running[name], seconds, opts.rate_connections, server_name, backend.proc.pid)
                    res.update(subject=name, rep=rep)
                    samples.append(res)
                    ctx.log(f"sniff {name:16} rep={rep}: " + describe(res))
                    time.sleep(0.2)
            for name in order:
                health[name].update(rss_kb_end=running[name].memory()["rss_kb"], alive=running[name].alive(),
                                    **log_summary(running[name]))
    finally:
        backend.stop()
    return {"section": "sniff",
            "params": {"seconds": seconds, "connections": opts.rate_connections, "repeat": opts.repeat,
                       "subjects": names, "sni": server_name, "certificate": certs.LABELS["ecdsa"],
                       "checks": checks, "health": health, "wrk_threads": 1,
                       "start_errors": {n: e for n, e in ctx.start_errors.items() if n in names}},
            "decision": decision, "samples": samples, "summary": summarize(names, samples)}


def measure(subject, seconds: float, connections: int, server_name: str, backend_pid: int) -> dict:
    other = OtherLoad(backend_pid)
    cpu0, user0 = subject.cpu(), subject.cpu_user()
    res = wrk(subject.port, seconds, connections, close=True, scheme="https", host=server_name)
    cpu = subject.cpu() - cpu0
    res["other_cpu_s"] = other.seconds(cpu)
    if subject.pid and "rps" in res and res.get("requests") and cpu > 0:
        res.update(cpu_s=cpu, user_share=(subject.cpu_user() - user0) / cpu,
                   cpu_us_per_conn=cpu / res["requests"] * 1e6, conn_per_cpu_s=res["requests"] / cpu)
    if not subject.alive():
        res["error"] = res.get("error", "") + " subject died"
    return res


def describe(res: dict) -> str:
    if "rps" not in res:
        return f"ERROR {res.get('error', res)}"
    cpu = f", {res['cpu_us_per_conn']:.0f} µs CPU/conn" if "cpu_us_per_conn" in res else ""
    return f"{res['rps']:.0f} conn/s p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms errors {res['errors']}{cpu}"


def summarize(names: list[str], samples: list[dict]) -> list[dict]:
    rows = []
    for name in names:
        ok = [s for s in samples if s["subject"] == name and "rps" in s]
        rows.append({"subject": name,
                     "rps": stats.summary([s["rps"] for s in ok]),
                     "p50_ms": stats.summary([s["p50_ms"] for s in ok]),
                     "p99_ms": stats.summary([s["p99_ms"] for s in ok]),
                     "errors": sum(s["errors"] for s in ok),
                     "failed_runs": len([s for s in samples if s["subject"] == name]) - len(ok),
                     "cpu_us_per_conn": stats.summary([s.get("cpu_us_per_conn") for s in ok]),
                     "conn_per_cpu_s": stats.summary([s.get("conn_per_cpu_s") for s in ok]),
                     "user_share": stats.summary([s.get("user_share") for s in ok]),
                     "other_cpu_s": stats.summary([s.get("other_cpu_s") for s in ok])})
    by = {r["subject"]: r for r in rows}
    ref = by.get(REFERENCE)
    for row in rows:
        row["rps_vs_ref"] = stats.ratio(row["rps"], ref["rps"]) if ref else None
        row["eff_vs_ref"] = stats.ratio(row["conn_per_cpu_s"], ref["conn_per_cpu_s"]) if ref else None
        base = by.get(PAIRS.get(row["subject"], ""))
        if base and row["cpu_us_per_conn"] and base["cpu_us_per_conn"]:
            row["sniff_us"] = row["cpu_us_per_conn"]["median"] - base["cpu_us_per_conn"]["median"]
    return rows
