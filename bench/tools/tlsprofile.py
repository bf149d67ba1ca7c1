"""Profile epollmux's TLS termination: `python3 -m bench.tools.tlsprofile [--seconds S] [--loads ...]`.

Owns: one profiling pass over an epollmux worker terminating TLS 1.3 (1 worker, ECDSA P-256,
`tls_resumption = no`, plaintext nginx behind) under three loads:
- tls-handshake: wrk over https with `Connection: close` (a full handshake and one request each);
- tls-keepalive: wrk over https on 32 persistent connections (small records);
- tls-bulk: 4 parallel curl downloads of a large file (16 KB records one way).
For each load, separate runs (so no tool distorts another's numbers): py-spy on the worker (Python
functions and lines, as in bench.tools.hotpaths), `perf record` on the worker (CPU by shared object:
libcrypto, libssl, libpython, kernel, and the hottest symbols), `strace -c` on the worker
(syscalls per unit), cProfile in the worker (bench/tools/cprofile_site/sitecustomize.py starts it after the
fork and dumps it at the worker's `os._exit`: Python calls per unit, not times, since cProfile
slows every call); then perf and strace on HAProxy (`bind ... ssl`, nbthread 1) under the same
load for comparison. Writes DIR/hotpaths-tls.{json,md}; bench/PROFILE.md is the reading of them.
Needs py-spy, perf (linux-perf) and strace; a missing tool skips its runs. Attaching needs ptrace rights.
The tracers are bench.tools.tracers'; this module owns the TLS loads, the plan and the report.
"""

from __future__ import annotations

import shutil
import sys

from bench.peers import certs, tlsload
from bench.peers.backends import Nginx, SparseFile
from bench.peers.loadgen import wrk
from bench.peers.subjects import EpollmuxTLS, HaproxyTLS, versions
from bench.tools.tracers import (cprofile, cprofile_env, options, perf, pyspy, pyspy_tables, run_plan, strace,
                                 strace_table, write)

LOADS = ("tls-handshake", "tls-keepalive", "tls-bulk")


def load(kind: str, port: int, seconds: float) -> dict:
    if kind == "tls-bulk":
        res = tlsload.bulk(port, seconds, 4)
        res.update(unit="MB", units=res.get("mb", 0))
        return res
    res = wrk(port, seconds, 32, close=kind == "tls-handshake", scheme="https")
    res.update(unit="handshake" if kind == "tls-handshake" else "request", units=res.get("requests", 0))
    return res


class ProfiledEpollmuxTLS(EpollmuxTLS):
    """epollmux whose worker runs under cProfile (bench/tools/cprofile_site)."""

    def env(self):
        return cprofile_env(super().env(), self.tmpdir, self.port)


def report_md(results: dict) -> str:
    lines = ["# epollmux TLS hot paths (raw figures of `python3 -m bench.tools.tlsprofile`)", "",
             f"epollmux {results.get('version', '?')}, 1 worker, TLS 1.3, ECDSA P-256, `tls_resumption = no`; "
             f"{results['seconds']} s per run.", ""]
    for kind, runs in results["loads"].items():
        lines += [f"## {kind}", ""]
        for key, who in (("perf", "epollmux worker"), ("perf-haproxy", "HAProxy")):
            pf = runs.get(key, {})
            if not pf.get("dso"):
                continue
            ld = pf["load"]
            lines += [f"perf on {who}: {ld.get('cpu_us_per_unit') or 0:.0f} µs CPU per {ld.get('unit')} "
                      f"(user {ld.get('user_s', 0) / max(ld.get('cpu_s') or 1e-9, 1e-9) * 100:.0f}%), "
                      f"rate {ld.get('rps') or ld.get('mb_per_s') or 0:.0f}/s", "",
                      "| share | shared object |", "|---|---|"]
            lines += [f"| {share * 100:.1f}% | `{name}` |" for name, share in pf["dso"]]
            lines += ["", "| share | shared object, symbol |", "|---|---|"]
            lines += [f"| {share * 100:.1f}% | `{name}` |" for name, share in pf["symbols"][:20]]
            lines.append("")
        cp = runs.get("cprofile", {})
        if cp.get("top"):
            lines += [f"cProfile in the worker: {cp['total_calls']} Python-visible calls, "
                      f"{cp['calls_per_unit'] or 0:.0f} per {cp['unit']} (counts only; the worker ran slower under it)", "",
                      f"| calls | per {cp['unit']} | function |", "|---|---|---|"]
            lines += [f"| {n} | {per or 0:.1f} | `{f}` |" for f, n, per in cp["top"][:25]]
            lines.append("")
        sp = runs.get("pyspy", {})
        if sp.get("samples"):
            ld = sp["load"]
            lines += [f"py-spy: {sp['samples']} busy samples at 200 Hz; worker {ld.get('cpu_us_per_unit') or 0:.0f} µs "
                      f"CPU per {ld.get('unit')}", ""]
            lines += pyspy_tables(sp)
        for key, who in (("strace", "epollmux worker"), ("strace-haproxy", "HAProxy")):
            st = runs.get(key, {})
            if not st.get("calls"):
                continue
            lines += [f"strace -c on {who}: syscalls per {st['unit']}", ""]
            lines += strace_table(st, 14)
    return "\n".join(lines)


def main(argv=None) -> int:
    o, ports, tmp = options("tlsprofile", LOADS, argv)
    results = {"seconds": o.seconds, "loads": {}, "version": versions()["epollmux"]}
    cert = certs.make(tmp, "ecdsa")
    plan = (("pyspy", "py-spy", EpollmuxTLS, pyspy), ("perf", "perf", EpollmuxTLS, perf),
            ("strace", "strace", EpollmuxTLS, strace), ("cprofile", sys.executable, ProfiledEpollmuxTLS, cprofile),
            ("perf-haproxy", "perf", HaproxyTLS, perf), ("strace-haproxy", "strace", HaproxyTLS, strace))
    with SparseFile() as bulk_file:
        backend = Nginx(tmp, ports.take(), bulk_file=bulk_file.path).start()
        try:
            for kind in o.loads.split(","):
                results["loads"][kind] = run_plan("tlsprofile", plan, kind,
                                                  lambda cls: cls(tmp, ports.take(), backend.address, cert, False),
                                                  o.seconds, tmp, load)
        finally:
            backend.stop()
    write(o.out, "hotpaths-tls", results, report_md(results))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
