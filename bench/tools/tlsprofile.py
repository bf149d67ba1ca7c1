"""Profile epollmux's TLS termination: `python3 -m bench.tools.tlsprofile [--seconds S] [--loads ...]`.

Owns: one profiling pass over an epollmux worker terminating TLS 1.3 (1 worker, ECDSA P-256,
`tls_resumption = no`, plaintext nginx behind) under three loads:
- tls-handshake: wrk over https with `Connection: close` (a full handshake and one request each);
- tls-keepalive: wrk over https on 32 persistent connections (small records);
- tls-bulk: 4 parallel curl downloads of a large file (16 KB records one way).
For each load, separate runs (so no tool distorts another's numbers): py-spy on the worker (Python
functions and lines, as in bench.tools.hotpaths), `perf record` on the worker (CPU by shared object:
libcrypto, libssl, libpython, kernel, and the hottest symbols), `strace -c` on the worker
(syscalls per unit), cProfile in the worker (a bench-only `sitecustomize` starts it after the
fork and dumps it at the worker's `os._exit`: Python calls per unit, not times, since cProfile
slows every call); then perf and strace on HAProxy (`bind ... ssl`, nbthread 1) under the same
load for comparison. Writes DIR/hotpaths-tls.{json,md}; bench/PROFILE.md is the reading of them.
Needs py-spy, perf (linux-perf) and strace; a missing tool skips its runs. Attaching needs ptrace rights.
"""

from __future__ import annotations

import os as _os
import sys as _sys

if not __package__:
    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

import functools
import os
import pstats
import re
import shutil
import subprocess
import sys
import time

from bench.peers import certs, tlsload
from bench.peers.backends import Nginx, SparseFile
from bench.peers.loadgen import wrk
from bench.tools.hotpaths import (attach, detach, options, pyspy, pyspy_tables, run_plan, strace, strace_table, timed,
                             worker_pid, write)
from bench.peers.tlssubjects import EpollmuxTLS, HaproxyTLS

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bench/
LOADS = ("tls-handshake", "tls-keepalive", "tls-bulk")


def load(kind: str, port: int, seconds: float) -> dict:
    if kind == "tls-bulk":
        res = tlsload.bulk(port, seconds, 4)
        res.update(unit="MB", units=res.get("mb", 0))
        return res
    res = wrk(port, seconds, 32, close=kind == "tls-handshake", scheme="https")
    res.update(unit="handshake" if kind == "tls-handshake" else "request", units=res.get("requests", 0))
    return res


SITECUSTOMIZE = """# bench-only: cProfile an epollmux worker from its fork to its os._exit (bench.tools.tlsprofile)
import cProfile, os
_out = os.environ.get("EPOLLMUX_BENCH_CPROFILE")
if _out:
    def _start():
        prof = cProfile.Profile()
        real_exit = os._exit
        def _exit(code):
            prof.disable()
            prof.dump_stats(_out % os.getpid())
            real_exit(code)
        os._exit = _exit
        prof.enable()
    os.register_at_fork(after_in_child=_start)
"""


def cprofile_env(env: dict, tmpdir: str, port: int) -> dict:
    """`env` (with PYTHONPATH set) made to run the epollmux worker under cProfile (SITECUSTOMIZE);
    its dump lands in tmpdir, named by `port`, for `cprofile_calls`."""
    site = os.path.join(tmpdir, "cprofile-site")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    env["PYTHONPATH"] = site + os.pathsep + env["PYTHONPATH"]
    env["EPOLLMUX_BENCH_CPROFILE"] = os.path.join(tmpdir, f"cprofile-{port}-%d.out")
    return env


def cprofile_calls(tmpdir: str, port: int) -> tuple[int, list[tuple[str, int]]] | None:
    """The exited worker's total calls and (function, calls) of each function; None without a dump."""
    dumps = [f for f in os.listdir(tmpdir) if f.startswith(f"cprofile-{port}-")]
    if not dumps:
        return None
    st = pstats.Stats(os.path.join(tmpdir, dumps[0]))
    funcs = []
    for (path, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        where = re.sub(r".*/(epollmux|python3\.\d+)/", r"\1/", path)
        funcs.append((f"{name} ({where}:{line})" if line else name, nc))
    return st.total_calls, funcs


class ProfiledEpollmuxTLS(EpollmuxTLS):
    """epollmux whose worker runs under cProfile (see SITECUSTOMIZE)."""

    def env(self):
        return cprofile_env(super().env(), self.tmpdir, self.port)


def cprofile(subject, seconds: float, kind: str, tmp: str) -> dict:
    """Python calls per unit in the worker, from cProfile's counts once the worker has exited."""
    time.sleep(1.0)
    res = load(kind, subject.port, seconds)
    subject.stop()
    calls = cprofile_calls(tmp, subject.port)
    if calls is None:
        return {"load": res, "error": "no cProfile dump (worker did not exit through os._exit?)"}
    total, funcs = calls
    per = res.get("units") or 0
    funcs.sort(key=lambda kv: -kv[1])
    return {"load": res, "total_calls": total, "unit": res.get("unit"),
            "calls_per_unit": total / per if per else None,
            "top": [(f, n, n / per if per else None) for f, n in funcs[:30]]}


def perf(subject, seconds: float, kind: str, tmp: str) -> dict:
    """perf record on the worker during the load; CPU shares by shared object and by symbol."""
    data = os.path.join(tmp, f"perf-{subject.ident}-{kind}.data")
    rec = attach(["perf", "record", "-F", "999", "-p", str(worker_pid(subject.pid)), "-o", data], data + ".log")
    time.sleep(1.0)
    res = timed(subject, load, kind, seconds)
    time.sleep(0.3)
    detach(rec)
    return {"load": res, "dso": _perf_report(data, "dso", 12), "symbols": _perf_report(data, "dso,sym", 30)}


def _perf_report(data: str, keys: str, top: int) -> list:
    try:
        out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", keys, "--stdio"],
                             capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.*\S)\s*$", line)
        if m and not line.lstrip().startswith("#"):
            rows.append((re.sub(r"\s+", " ", m.group(2)), float(m.group(1)) / 100))
    return rows[:top]


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
    from bench.peers.subjects import versions
    results = {"seconds": o.seconds, "loads": {}, "version": versions()["epollmux"]}
    cert = certs.make(tmp, "ecdsa")
    spy, trace = functools.partial(pyspy, loader=load), functools.partial(strace, loader=load)
    plan = (("pyspy", "py-spy", EpollmuxTLS, spy), ("perf", "perf", EpollmuxTLS, perf),
            ("strace", "strace", EpollmuxTLS, trace), ("cprofile", sys.executable, ProfiledEpollmuxTLS, cprofile),
            ("perf-haproxy", "perf", HaproxyTLS, perf), ("strace-haproxy", "strace", HaproxyTLS, trace))
    with SparseFile() as bulk_file:
        backend = Nginx(tmp, ports.take(), bulk_file=bulk_file.path).start()
        try:
            for kind in o.loads.split(","):
                results["loads"][kind] = run_plan("tlsprofile", plan, kind,
                                                  lambda cls: cls(tmp, ports.take(), backend.address, cert, False),
                                                  o.seconds, tmp)
        finally:
            backend.stop()
    write(o.out, "hotpaths-tls", results, report_md(results))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
