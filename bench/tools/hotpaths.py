"""Profile epollmux's hot paths: `python3 -m bench.tools.hotpaths [--seconds S] [--out DIR]`.

Owns: one profiling pass over an epollmux worker (splice relay, 1 worker) under two loads:
- bulk: iperf3, 1 stream, through epollmux;
- connrate: wrk with `Connection: close` to nginx through epollmux.
For each load, two separate runs (so neither tool distorts the other's numbers):
- py-spy (sampling at 200 Hz, idle samples dropped, so shares are of the worker's busy time)
  attached to the worker: self and inclusive shares per Python function and per source line,
  beside the worker's CPU seconds (user and system) over the same load;
- strace -c attached to the worker: the count of every syscall, divided by the connections
  served (wrk's request count) or the megabytes relayed (iperf3's byte count); the same for
  HAProxy (nbthread 1), for comparison.
Writes DIR/hotpaths.json and DIR/hotpaths.md (raw figures; bench/PROFILE.md is the reading of them).
Needs py-spy (pip) and strace; a missing tool skips its runs. Attaching needs ptrace rights.
"""

from __future__ import annotations

import os as _os
import sys as _sys

if not __package__:   # run as a script (python3 bench/run.py): import the package from the repo root
    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench.peers.backends import Iperf3, Nginx
from bench.peers.loadgen import iperf3
from bench.peers.loadgen import wrk
from bench.harness.procs import Ports, children_of
from bench.peers.subjects import EpollmuxSplice, Haproxy

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bench/


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


def load(kind: str, port: int, seconds: float) -> dict:
    """Run one load; the result names its unit and how many units it moved ("units")."""
    if kind == "bulk":
        res = iperf3(port, seconds, 1)
        res["mb"] = res.get("bytes", 0) / 1e6
        res.update(unit="MB", units=res["mb"])
        return res
    res = wrk(port, seconds, 32, close=True)
    res["connections"] = res.get("requests", 0)
    res.update(unit="connection", units=res["connections"])
    return res


def pyspy(subject, seconds: float, kind: str, tmp: str, loader=load) -> dict:
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


def strace(subject, seconds: float, kind: str, tmp: str, loader=load) -> dict:
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


def report_md(results: dict) -> str:
    lines = ["# epollmux hot paths (raw figures of `python3 -m bench.tools.hotpaths`)", ""]
    for kind, runs in results["loads"].items():
        lines += [f"## {kind}", ""]
        sp = runs.get("pyspy", {})
        if sp.get("samples"):
            lines += [f"py-spy: {sp['samples']} busy samples at 200 Hz (idle dropped); load and worker CPU: "
                      f"{json.dumps({k: v for k, v in sp['load'].items() if not isinstance(v, dict)})}", ""]
            lines += pyspy_tables(sp)
        for key, who in (("strace", "epollmux"), ("strace-haproxy", "HAProxy (for comparison)")):
            st = runs.get(key, {})
            if not st.get("calls"):
                continue
            lines += [f"strace -c on {who} (separate run): syscalls per {st['unit']}; load: "
                      f"{json.dumps({k: v for k, v in st['load'].items() if not isinstance(v, dict)})}", ""]
            lines += strace_table(st)
    return "\n".join(lines)


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
    p = argparse.ArgumentParser(prog=f"python3 -m bench.{prog}")
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


def run_plan(prog: str, plan, kind: str, make, seconds: float, tmp: str) -> dict:
    """key -> result for each (key, tool, subject class, fn) of plan, in turn: a fresh subject
    (`make(cls)`), measured by fn(subject, seconds, kind, tmp) after 0.5 s, then stopped."""
    runs = {}
    for key, tool, cls, fn in plan:
        if not shutil.which(tool):
            runs[key] = {"error": f"{tool} not installed"}
            continue
        subject = make(cls).start()
        try:
            time.sleep(0.5)
            runs[key] = fn(subject, seconds, kind, tmp)
        finally:
            subject.stop()
        print(f"[{prog}] {kind} {key} done", file=sys.stderr, flush=True)
    return runs


def main(argv=None) -> int:
    o, ports, tmp = options("hotpaths", ("bulk", "connrate"), argv)
    results = {"seconds": o.seconds, "loads": {}}
    plan = (("pyspy", "py-spy", EpollmuxSplice, pyspy), ("strace", "strace", EpollmuxSplice, strace),
            ("strace-haproxy", "strace", Haproxy, strace))
    for kind, backend_cls in (("bulk", Iperf3), ("connrate", Nginx)):
        if kind not in o.loads.split(","):
            continue
        backend = backend_cls(tmp, ports.take()).start()
        try:
            results["loads"][kind] = run_plan("hotpaths", plan, kind,
                                              lambda cls: cls(tmp, ports.take(), backend.address), o.seconds, tmp)
        finally:
            backend.stop()
    write(o.out, "hotpaths", results, report_md(results))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
