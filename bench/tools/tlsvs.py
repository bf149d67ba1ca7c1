"""epollmux's TLS against stunnel and HAProxy, per round: `python3 -m bench.tools.tlsvs [--load L] [--rounds N]
[--seconds S] [--subjects ...] [--ref SUBJECT]`.

Owns: interleaved rounds (the order rotates each round) of one TLS load, as the bench's TLS section runs it
(nginx behind; TLS 1.3, ECDSA P-256, resumption off): `bulk` (4 parallel curl downloads), `keepalive` (wrk, 32
persistent connections) or `handshake` (wrk `Connection: close`), against stunnel, epollmux (this tree) with 1
and 2 workers and HAProxy (nbthread 1), each started fresh per run. Per run: the rate (MB/s or requests/s), the
subject's CPU per unit (all its processes), its CPU share (CPU-seconds per wall second: a one-thread terminator
cannot pass 1.0, and gets about one fair share of the two CPUs against the load generators and nginx), and the
whole machine's busy CPUs; per round each rate over the reference's (stunnel for bulk, else HAProxy). Prints
medians with min-max. Measures; changes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from bench.harness.procs import Ports, machine_cpu_seconds
from bench.peers import certs, tlsload
from bench.peers.backends import Nginx, SparseFile
from bench.peers.loadgen import wrk
from bench.peers.subjects import EpollmuxTLS, EpollmuxTLS2, HaproxyTLS, Stunnel

SUBJECTS = {"stunnel": Stunnel, "epollmux-tls": EpollmuxTLS, "epollmux-tls-2w": EpollmuxTLS2,
            "haproxy-tls": HaproxyTLS}


def one_run(cls, tmp, ports, backend, cert, seconds: float, load: str) -> dict:
    subject = cls(tmp, ports.take(), backend.address, cert, False).start()
    try:
        time.sleep(0.5)
        c0, m0, t0 = subject.cpu(), machine_cpu_seconds(), time.monotonic()
        if load == "bulk":
            res = tlsload.bulk(subject.port, seconds, 4)
            res.update(units=res.get("mb"), rate=res.get("mb_per_s"))
        else:
            res = wrk(subject.port, seconds, 32, close=load == "handshake", scheme="https")
            res.update(units=res.get("requests"), rate=res.get("rps"), failures=res.get("errors", 0))
        cpu, busy, wall = subject.cpu() - c0, machine_cpu_seconds() - m0, time.monotonic() - t0
    finally:
        subject.stop()
    units = res.get("units") or 0
    return {"rate": res.get("rate") or 0, "us": cpu / units * 1e6 if units else None,
            "share": cpu / wall, "busy": busy / wall, "failures": res.get("failures", 0)}


def med(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if xs else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.tools.tlsvs")
    p.add_argument("--load", default="bulk", choices=("bulk", "keepalive", "handshake"))
    p.add_argument("--ref", default=None, help="the subject the rates are divided by (default: stunnel for bulk, "
                   "else haproxy-tls)")
    p.add_argument("--subjects", default="stunnel,epollmux-tls,epollmux-tls-2w,haproxy-tls")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--ports", default="26500-26599")
    o = p.parse_args(argv)
    names = o.subjects.split(",")
    ports = Ports(*(int(x) for x in o.ports.split("-")))
    tmp = tempfile.mkdtemp(prefix="epollmux-tlsbulk-")
    cert = certs.make(tmp, "ecdsa")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with SparseFile() as bulk_file:
        backend = Nginx(tmp, ports.take(), bulk_file=bulk_file.path).start()
        try:
            for r in range(o.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    runs[name].append(one_run(SUBJECTS[name], tmp, ports, backend, cert, o.seconds, o.load))
        finally:
            backend.stop()
    ref_name = o.ref or ("stunnel" if o.load == "bulk" else "haproxy-tls")
    ref = runs.get(ref_name)
    unit = "MB" if o.load == "bulk" else "req"
    for name in names:
        rows = runs[name]
        ratio = [x["rate"] / s["rate"] for x, s in zip(rows, ref) if s["rate"]] if ref else []
        print(f"{o.load} {name:16} {unit}/s {med([x['rate'] for x in rows])}, × {ref_name} per round {med(ratio)}, "
              f"CPU µs/{unit} {med([x['us'] for x in rows])}, CPU share {med([x['share'] for x in rows])}, "
              f"machine busy CPUs {med([x['busy'] for x in rows])}, failed "
              f"{sum(x['failures'] for x in rows)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
