"""The tracers the bench tools attach to a running epollmux worker, and the frame of a profiling pass.

Owns: finding the worker (`worker_pid`), attaching and ending a tracer by PID (`attach`, `detach`), one
load measured with the subject's CPU (`timed`), py-spy (collapsed into self and inclusive shares), `strace -c`
(syscalls per unit), `perf record` (CPU by shared object and symbol), cProfile inside the worker (calls per
unit: `cprofile_env` puts `cprofile_site/sitecustomize.py` on the worker's PYTHONPATH, `cprofile_calls` reads
the dump), the markdown tables of their results, and the options, plan loop and output files that
bench.tools.hotpaths and bench.tools.tlsprofile share. A `loader(kind, port, seconds)` is the tool's own:
it runs one load and returns a dict with `unit` and `units`. Runs no load of its own.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench.harness.procs import Ports, children_of

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bench/
SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cprofile_site")


def worker_pid(pid: int) -> int:
    """The epollmux worker: the subject's only child if a supervisor forks one, else the subject."""
    kids = children_of().get(pid, [])
    return kids[0] if len(kids) == 1 else pid


def attach(argv: list[str], out_path: str) -> subprocess.Popen:
    log = open(out_path, "w")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def detach(proc: subprocess.Popen, timeout: float = 15) -> None:
    """End an attached tracer by its PID (SIGINT makes strace print its summary)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def pyspy(subject, seconds: float, kind: str, tmp: str, loader) -> dict:
    raw = os.path.join(tmp, f"pyspy-{kind}.txt")
    spy = attach(["py-spy", "record", "-p", str(worker_pid(subject.pid)), "--nonblocking", "--rate", "200",
                  "--format", "raw", "-o", raw, "-d", str(int(seconds + 2))], raw + ".log")
    time.sleep(1.0)
    res = timed(subject, loader, kind, seconds)
    try:
        spy.wait(seconds + 20)
    except subprocess.TimeoutExpired:
        detach(spy)
    return {"load": res, **collapse(raw)}


def timed(subject, loader, kind: str, seconds: float) -> dict:
    """Run one load; add the subject's CPU seconds (all and user) over it and its CPU µs per unit."""
    cpu0, user0 = subject.cpu(), subject.cpu_user()
    res = loader(kind, subject.port, seconds)
    cpu, user = subject.cpu() - cpu0, subject.cpu_user() - user0
    per = res.get("units")
    res.update(cpu_s=cpu, user_s=user, cpu_us_per_unit=cpu / per * 1e6 if per else None)
    return res


def collapse(path: str) -> dict:
    """Self and inclusive sample shares per line and per function from py-spy's collapsed stacks."""
    self_c, incl_c, total = collections.Counter(), collections.Counter(), 0
    fself, fincl = collections.Counter(), collections.Counter()
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return {"error": "no py-spy output"}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r" \(/.*/(epollmux|python3\.\d+)/", r" (\1/", f) for f in stack.split(";")[1:]]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n
        funcs = [f.split(" (")[0] for f in frames]
        fself[funcs[-1]] += n
        for f in set(funcs):
            fincl[f] += n
    share = (lambda c, k: [(f, n / total) for f, n in c.most_common(k)]) if total else (lambda c, k: [])
    return {"samples": total, "self": share(self_c, 25), "inclusive": share(incl_c, 40),
            "function_self": share(fself, 30), "function_inclusive": share(fincl, 40)}


def strace(subject, seconds: float, kind: str, tmp: str, loader) -> dict:
    out = os.path.join(tmp, f"strace-{subject.ident}-{kind}.txt")
    tracer = attach(["strace", "-c", "-f", "-p", str(worker_pid(subject.pid)), "-o", out], out + ".log")
    time.sleep(1.0)
    res = loader(kind, subject.port, seconds)
    time.sleep(0.5)
    detach(tracer)
    counts = {}
    try:
        for line in open(out):
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m:
                counts[m.group(2)] = int(m.group(1))
    except OSError:
        return {"load": res, "error": "no strace output"}
    per = res.get("units")
    return {"load": res, "calls": counts, "unit": res.get("unit"),
            "per_unit": {k: v / per for k, v in counts.items()} if per else {}}


def pyspy_tables(sp: dict) -> list[str]:
    """Markdown lines: the top 25 of py-spy's shares per function (self, inclusive) and per line (self)."""
    lines = []
    for key, title in (("function_self", "self share, per function"),
                       ("function_inclusive", "inclusive share, per function"),
                       ("self", "self share, per line")):
        lines += [f"| {title} | |", "|---|---|"]
        lines += [f"| {share * 100:.1f}% | `{f}` |" for f, share in sp[key][:25]]
        lines.append("")
    return lines


def strace_table(st: dict, top: int | None = None) -> list[str]:
    """Markdown lines: strace's syscalls, most called first (the first `top`), with calls per unit."""
    lines = [f"| syscall | calls | per {st['unit']} |", "|---|---|---|"]
    for name, n in sorted(st["calls"].items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {name} | {n} | {st['per_unit'].get(name, 0):.2f} |")
    return lines + [""]


def options(prog: str, loads: tuple[str, ...], argv) -> tuple[argparse.Namespace, Ports, str]:
    """The options bench.tools.hotpaths and bench.tools.tlsprofile share; their ports and a fresh temp dir."""
    p = argparse.ArgumentParser(prog=f"python3 -m bench.tools.{prog}")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--ports", default="25900-25999")
    p.add_argument("--loads", default=",".join(loads), help="comma list of " + ", ".join(loads))
    o = p.parse_args(argv)
    first, last = (int(x) for x in o.ports.split("-"))
    return o, Ports(first, last), tempfile.mkdtemp(prefix=f"epollmux-{prog}-")


def write(out: str, stem: str, results: dict, md: str) -> None:
    """DIR/STEM.json and DIR/STEM.md; the markdown is printed too."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(md)
    print(md)


def run_plan(prog: str, plan, kind: str, make, seconds: float, tmp: str, loader) -> dict:
    """key -> result for each (key, tool, subject class, fn) of plan, in turn: a fresh subject
    (`make(cls)`), measured by fn(subject, seconds, kind, tmp, loader) after 0.5 s, then stopped."""
    runs = {}
    for key, tool, cls, fn in plan:
        if not shutil.which(tool):
            runs[key] = {"error": f"{tool} not installed"}
            continue
        subject = make(cls).start()
        try:
            time.sleep(0.5)
            runs[key] = fn(subject, seconds, kind, tmp, loader)
        finally:
            subject.stop()
        print(f"[{prog}] {kind} {key} done", file=sys.stderr, flush=True)
    return runs


def cprofile_env(env: dict, tmpdir: str, port: int) -> dict:
    """`env` (with PYTHONPATH set) made to run the epollmux worker under cProfile (cprofile_site/sitecustomize.py);
    its dump lands in tmpdir, named by `port`, for `cprofile_calls`."""
    env["PYTHONPATH"] = SITE + os.pathsep + env["PYTHONPATH"]
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


def cprofile(subject, seconds: float, kind: str, tmp: str, loader) -> dict:
    """Python calls per unit in the worker, from cProfile's counts once the worker has exited."""
    time.sleep(1.0)
    res = loader(kind, subject.port, seconds)
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


def perf(subject, seconds: float, kind: str, tmp: str, loader) -> dict:
    """perf record on the worker during the load; CPU shares by shared object and by symbol."""
    data = os.path.join(tmp, f"perf-{subject.ident}-{kind}.data")
    rec = attach(["perf", "record", "-F", "999", "-p", str(worker_pid(subject.pid)), "-o", data], data + ".log")
    time.sleep(1.0)
    res = timed(subject, loader, kind, seconds)
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


