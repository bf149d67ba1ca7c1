"""TLS termination: handshakes, resumed handshakes, keep-alive requests, bulk MB/s.

Owns: the tls section. One plaintext nginx (1 worker; `/` = 34-byte body, `/bulk` = a sparse file of
zeros) behind every terminator (bench.peers.subjects: epollmux, stunnel, HAProxy `bind ... ssl`, and
nginx terminating itself as the no-proxy reference). TLS 1.3 only. Each subject runs as three
instances, all started at once: ECDSA P-256 with resumption off, RSA-2048 with resumption off, and
ECDSA P-256 with resumption on. Measurements, per round, subject order rotated each round:
- `full-ecdsa`, `full-rsa`: wrk over https with `Connection: close` against the resumption-off
  instance: every connection is a full handshake plus one request (handshakes/s = requests/s);
- `resumed`: the same against the resumption-on instance: wrk offers each slot's last session, so
  all but the first handshake per slot resume (PSK with ECDHE: no certificate signature, which is
  why resumed, keep-alive and bulk are measured with the ECDSA certificate only);
- `keepalive`: wrk over https on persistent connections (the record path with small messages);
- `bulk`: `--tls-streams` parallel curl downloads of /bulk for the run's duration: MB/s one way
  (nginx -> terminator encrypts -> curl).
Per run: the rate, wrk's p50/p99 and errors, the subject's CPU (all its processes, cgroup) per
handshake / request / MB, and the CPU the rest of the machine used meanwhile.
Before measuring, `tlsload.check()` records each instance's version, cipher and whether it resumed.
"""

from __future__ import annotations

import time

from bench.peers import certs, tlsload
from bench.harness import stats
from bench.peers.backends import Nginx, SparseFile
from bench.peers.loadgen import wrk
from bench.harness.context import Context, started
from bench.harness.procs import OtherLoad
from bench.peers.subjects import TERMINATORS, log_summary

SUBJECTS = list(TERMINATORS)
REFERENCE = "haproxy-tls"
BULK_REFERENCE = "stunnel"
# mode -> (instance variant, load, unit of one operation)
MODES = {
    "full-ecdsa": ("ecdsa.full", "close", "handshake"),
    "full-rsa": ("rsa.full", "close", "handshake"),
    "resumed": ("ecdsa.resume", "close", "handshake"),
    "keepalive": ("ecdsa.resume", "keepalive", "request"),
    "bulk": ("ecdsa.resume", "bulk", "MB"),
}
VARIANTS = {"ecdsa.full": ("ecdsa", False), "rsa.full": ("rsa", False), "ecdsa.resume": ("ecdsa", True)}


def run_section(ctx: Context) -> dict:
    opts = ctx.opts
    names = [n for n in opts.subjects if n in SUBJECTS]
    seconds = opts.tls_seconds
    cert = {kind: certs.make(ctx.tmpdir, kind) for kind in ("ecdsa", "rsa")}
    keys = [f"{name}/{variant}" for name in names for variant in VARIANTS]
    samples, checks, health = [], {}, {}
    with SparseFile() as bulk_file:
        backend = Nginx(ctx.tmpdir, ctx.ports.take(), bulk_file=bulk_file.path).start()

        def make(key, port):
            name, variant = key.split("/")
            kind, resumption = VARIANTS[variant]
            return TERMINATORS[name](ctx.tmpdir, port, backend.address, cert[kind], resumption,
                                     bulk_file=bulk_file.path)

        try:
            with started(ctx, keys, backend.address, make=make) as running:
                for key, subject in running.items():
                    checks[key] = tlsload.check(subject.port)
                    health[key] = {"rss_kb_start": subject.memory()["rss_kb"]}
                order = [n for n in names if all(f"{n}/{v}" in running for v in VARIANTS)]
                for rep in range(opts.repeat):
                    rotated = order[rep % len(order):] + order[:rep % len(order)] if order else []
                    for mode, (variant, load, unit) in MODES.items():
                        for name in rotated:
                            if not ctx.has_time(seconds + 5):
                                samples.append({"subject": name, "mode": mode, "rep": rep,
                                                "error": "skipped: time budget"})
                                continue
                            res = measure(running[f"{name}/{variant}"], load, seconds, opts, backend.proc.pid)
                            res.update(subject=name, mode=mode, rep=rep, unit=unit)
                            samples.append(res)
                            ctx.log(f"tls {name:16} {mode:10} rep={rep}: " + describe(res))
                            time.sleep(0.2)
                for key, subject in running.items():
                    health[key].update(rss_kb_end=subject.memory()["rss_kb"], alive=subject.alive(),
                                       **log_summary(subject))
        finally:
            backend.stop()
    return {"section": "tls",
            "params": {"seconds": seconds, "connections": opts.rate_connections, "streams": opts.tls_streams,
                       "repeat": opts.repeat, "subjects": names, "checks": checks, "health": health,
                       "certificates": {k: certs.LABELS[k] for k in cert}, "wrk_threads": 1,
                       "start_errors": {n: e for n, e in ctx.start_errors.items() if n.split("/")[0] in names}},
            "samples": samples, "summary": summarize(names, samples)}


def measure(subject, load: str, seconds: float, opts, backend_pid: int) -> dict:
    if not subject.alive():
        return {"error": "subject not running"}
    other = OtherLoad(backend_pid)
    cpu0, user0 = subject.cpu(), subject.cpu_user()
    if load == "bulk":
        res = tlsload.bulk(subject.port, seconds, opts.tls_streams)
        ops = res.get("mb")
        res["rate"] = res.get("mb_per_s")
    else:
        res = wrk(subject.port, seconds, opts.rate_connections, close=load == "close", scheme="https")
        ops = res.get("requests")
        res["rate"] = res.get("rps")
    time.sleep(0.1)        # let the last closes finish before reading the CPU
    cpu = subject.cpu() - cpu0
    res["other_cpu_s"] = other.seconds(cpu)
    if res["rate"] is None:
        res.pop("rate")
    elif ops and cpu > 0:
        res.update(cpu_s=cpu, user_share=(subject.cpu_user() - user0) / cpu,
                   cpu_us_per_op=cpu / ops * 1e6, ops_per_cpu_s=ops / cpu)
    if not subject.alive():
        res["error"] = res.get("error", "") + " subject died"
    return res


def describe(res: dict) -> str:
    if "rate" not in res:
        return f"ERROR {res.get('error', res)}"
    unit = "MB/s" if res.get("unit") == "MB" else "/s"
    text = f"{res['rate']:.0f} {unit}"
    if res.get("p50_ms") is not None:
        text += f" p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms errors {res['errors']}"
    if res.get("failures"):
        text += f" failed downloads {res['failures']}"
    if "cpu_us_per_op" in res:
        text += f", {res['cpu_us_per_op']:.0f} µs CPU per {res.get('unit')}"
    return text


def summarize(names: list[str], samples: list[dict]) -> list[dict]:
    rows = []
    for name in names:
        row = {"subject": name}
        for mode in MODES:
            mine = [s for s in samples if s["subject"] == name and s["mode"] == mode]
            ok = [s for s in mine if "rate" in s]
            row[mode] = {"rate": stats.summary([s["rate"] for s in ok]),
                         "p50_ms": stats.summary([s.get("p50_ms") for s in ok]),
                         "p99_ms": stats.summary([s.get("p99_ms") for s in ok]),
                         "errors": sum(s.get("errors", 0) + s.get("failures", 0) for s in ok),
                         "failed_runs": len(mine) - len(ok),
                         "cpu_us_per_op": stats.summary([s.get("cpu_us_per_op") for s in ok]),
                         "ops_per_cpu_s": stats.summary([s.get("ops_per_cpu_s") for s in ok]),
                         "user_share": stats.summary([s.get("user_share") for s in ok]),
                         "other_cpu_s": stats.summary([s.get("other_cpu_s") for s in ok])}
        rows.append(row)
    by = {r["subject"]: r for r in rows}
    for row in rows:
        for mode in MODES:
            for ref_name, tag in ((REFERENCE, "haproxy"), (BULK_REFERENCE, "stunnel")):
                ref = by.get(ref_name)
                cell = row[mode]
                cell[f"rate_vs_{tag}"] = stats.ratio(cell["rate"], ref[mode]["rate"]) if ref else None
                cell[f"eff_vs_{tag}"] = stats.ratio(cell["ops_per_cpu_s"], ref[mode]["ops_per_cpu_s"]) if ref else None
    return rows
