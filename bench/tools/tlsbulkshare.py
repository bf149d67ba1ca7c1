"""Who gets the CPU in TLS bulk: `python3 -m bench.tools.tlsbulkshare [--rounds N] [--seconds S] [--subjects ...]`.

Owns: interleaved rounds (the order rotates each round) of the TLS bulk load (4 parallel curl downloads through
the terminator, nginx behind, as the bench's TLS section) against stunnel, epollmux with 1 and 2 workers and
HAProxy (nbthread 1), each started fresh per run. Per run: MB/s, the subject's CPU per MB (all its processes),
its CPU share (CPU-seconds per wall second: a one-thread terminator cannot pass 1.0, and gets about one fair
share of the two CPUs against the four curls and nginx), and the whole machine's busy CPUs; per round each rate
over stunnel's. Prints medians with min-max. Measures; changes nothing.
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
from bench.peers.subjects import EpollmuxTLS, EpollmuxTLS2, HaproxyTLS, Stunnel

SUBJECTS = {"stunnel": Stunnel, "epollmux-tls": EpollmuxTLS, "epollmux-tls-2w": EpollmuxTLS2,
            "haproxy-tls": HaproxyTLS}


def one_run(cls, tmp, ports, backend, cert, seconds: float) -> dict:
    subject = cls(tmp, ports.take(), backend.address, cert, False).start()
    try:
        time.sleep(0.5)
        c0, m0, t0 = subject.cpu(), machine_cpu_seconds(), time.monotonic()
        res = tlsload.bulk(subject.port, seconds, 4)
        cpu, busy, wall = subject.cpu() - c0, machine_cpu_seconds() - m0, time.monotonic() - t0
    finally:
        subject.stop()
    mb = res.get("mb") or 0
    return {"mbps": res.get("mb_per_s") or 0, "us_per_mb": cpu / mb * 1e6 if mb else None,
            "share": cpu / wall, "busy": busy / wall, "failures": res.get("failures", 0)}


def med(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if xs else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.tools.tlsbulkshare")
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
                    runs[name].append(one_run(SUBJECTS[name], tmp, ports, backend, cert, o.seconds))
        finally:
            backend.stop()
    ref = runs.get("stunnel")
    for name in names:
        rows = runs[name]
        ratio = [x["mbps"] / s["mbps"] for x, s in zip(rows, ref) if s["mbps"]] if ref else []
        print(f"{name:16} MB/s {med([x['mbps'] for x in rows])}, × stunnel per round {med(ratio)}, "
              f"CPU µs/MB {med([x['us_per_mb'] for x in rows])}, CPU share {med([x['share'] for x in rows])}, "
              f"machine busy CPUs {med([x['busy'] for x in rows])}, failed downloads "
              f"{sum(x['failures'] for x in rows)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
