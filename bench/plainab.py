"""A/B of two epollmux trees on plain connections: `python3 -m bench.plainab --base DIR [--work DIR] ...`.

Owns: short interleaved runs (base, work, work, base, ...) of one epollmux worker (`relay = splice`, `probe = any`,
nginx behind, as bench.subjects.EpollmuxSplice) under wrk `Connection: close` (a connection per request). Per run:
the worker's CPU µs per connection from /proc/PID/stat and the rate; with --cprofile, one extra run per tree
counts Python-visible calls per connection (as bench.tlsab). Prints medians with min-max. Measures; changes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from bench.backends import Nginx
from bench.connrate import wrk
from bench.hotpaths import worker_pid
from bench.procs import Ports, cpu_seconds
from bench.subjects import REPO, EpollmuxSplice
from bench.tlsprofile import cprofile_calls, cprofile_env


class TreePlain(EpollmuxSplice):
    """epollmux (splice) run from `tree` (its cwd and PYTHONPATH), optionally under cProfile."""

    def __init__(self, tmpdir, port, backend, tree: str, profile: bool):
        super().__init__(tmpdir, port, backend)
        self.tree = self.cwd = tree
        self.profile = profile
        self.variant = f"{os.path.basename(tree)}.{port}"

    def env(self):
        env = dict(os.environ, PYTHONPATH=self.tree)
        return cprofile_env(env, self.tmpdir, self.port) if self.profile else env


def one_run(tree, seconds, tmp, ports, backend, profile=False) -> dict:
    subject = TreePlain(tmp, ports.take(), backend.address, tree, profile).start()
    try:
        time.sleep(0.5)
        worker = worker_pid(subject.pid)
        c0 = cpu_seconds(worker)
        res = wrk(subject.port, seconds, 32, close=True)
        cpu = cpu_seconds(worker) - c0
    finally:
        subject.stop()
    units = res.get("requests") or 0
    out = {"units": units, "rps": res.get("rps"), "us": cpu / units * 1e6 if units else None}
    calls = cprofile_calls(tmp, subject.port) if profile and units else None
    if calls:
        total, funcs = calls
        out["calls"] = total / units
        out["top"] = [f for f in sorted(((nc / units, name) for name, nc in funcs), reverse=True) if f[0] >= 0.3]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.plainab")
    p.add_argument("--base", required=True)
    p.add_argument("--work", default=REPO)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--ports", default="26200-26299")
    o = p.parse_args(argv)
    first, last = (int(x) for x in o.ports.split("-"))
    ports = Ports(first, last)
    tmp = tempfile.mkdtemp(prefix="epollmux-plainab-")
    trees = {"base": os.path.abspath(o.base), "work": os.path.abspath(o.work)}
    backend = Nginx(tmp, ports.take()).start()
    try:
        runs = {name: [] for name in trees}
        for r in range(o.rounds):
            for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                runs[name].append(one_run(trees[name], o.seconds, tmp, ports, backend))
        for name in trees:
            us = [x["us"] for x in runs[name] if x["us"]]
            rps = [x["rps"] for x in runs[name] if x["rps"]]
            if us:
                print(f"plain {name}: worker {statistics.median(us):6.1f} µs/conn ({min(us):.1f}-{max(us):.1f}), "
                      f"rate {statistics.median(rps):8.0f}/s ({min(rps):.0f}-{max(rps):.0f})", flush=True)
        if o.cprofile:
            for name in trees:
                res = one_run(trees[name], o.seconds, tmp, ports, backend, profile=True)
                print(f"plain {name}: {res.get('calls', 0):.1f} Python calls per connection", flush=True)
                for per, func in res.get("top", []):
                    print(f"      {per:6.2f}  {func}")
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
