"""A/B of two epollmux trees on plain connections: `python3 -m bench.tools.plainab --base DIR [--work DIR] ...`.

Owns: short interleaved runs (base, work, work, base, ...) of epollmux (`relay = splice`, `probe = any`, nginx
behind, as bench.peers.subjects.EpollmuxSplice; `--workers N`), optionally beside reference subjects
(`--refs haproxy,sslh-select,direct`: HAProxy gets `nbthread` = the workers), in two loads:
- `close`: wrk `Connection: close` (a connection per request): the rate, and the CPU µs per connection of all
  the subject's processes (cgroup, else /proc); with --cprofile, one extra run per tree counts Python-visible
  calls per connection (as bench.tools.tlsab; 1 worker);
- `unloaded`: one connection at a time, connect to EOF (bench.sections.connrate.unloaded), p50 and p99.
Prints medians with min-max and, per round, the ratio of each subject to the first reference (or to base),
so that a shared machine's drift cancels. Measures; changes nothing.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from bench.peers.backends import Nginx
from bench.peers.loadgen import wrk
from bench.harness.procs import Ports
from bench.peers.subjects import Direct, EpollmuxSplice, Haproxy, SslhSelect
from bench.sections.connrate import unloaded
from bench.tools.tlsab import ab_options, measure, print_calls
from bench.tools.tlsprofile import cprofile_env


class TreePlain(EpollmuxSplice):
    """epollmux (splice) run from `tree` (its cwd and PYTHONPATH), optionally under cProfile."""

    def __init__(self, tmpdir, port, backend, tree: str, profile: bool, workers: int = 1):
        super().__init__(tmpdir, port, backend)
        self.workers = workers
        self.tree = self.cwd = tree
        self.profile = profile
        self.variant = f"{os.path.basename(tree)}.{port}"

    def env(self):
        env = dict(os.environ, PYTHONPATH=self.tree)
        return cprofile_env(env, self.tmpdir, self.port) if self.profile else env


class HaproxyN(Haproxy):
    def __init__(self, tmpdir, port, backend, threads: int):
        super().__init__(tmpdir, port, backend)
        self.nbthread = threads
        self.variant = str(port)


def make(name: str, trees: dict, tmp: str, port: int, backend, workers: int):
    if name in trees:
        return TreePlain(tmp, port, backend.address, trees[name], False, workers)
    if name == "haproxy":
        return HaproxyN(tmp, port, backend.address, workers)
    if name == "sslh-select":
        subject = SslhSelect(tmp, port, backend.address)
        subject.variant = str(port)
        return subject
    if name == "direct":
        return Direct(tmp, port, backend.address)
    raise SystemExit(f"unknown subject {name}")


def one_run(subject, load: str, seconds: float, count: int) -> dict:
    """Start-to-stop of one run of the started `subject`: the rate and CPU µs per connection (close) or
    the connect-to-EOF p50/p99 in ms (unloaded)."""
    try:
        time.sleep(0.3)
        if load == "unloaded":
            unloaded(subject.port, 20, 5)       # warm-up
            res = unloaded(subject.port, count, budget=seconds * 10)
            return {"p50": res["p50_ms"], "p99": res["p99_ms"]}
        c0 = subject.cpu()
        res = wrk(subject.port, seconds, 32, close=True)
        cpu = subject.cpu() - c0
        units = res.get("requests") or 0
        return {"rps": res.get("rps"), "us": cpu / units * 1e6 if units and cpu else None}
    finally:
        subject.stop()


def spread(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def report(load: str, runs: dict[str, list[dict]], ref: str) -> None:
    keys = ("p50", "p99") if load == "unloaded" else ("rps", "us")
    for name, rows in runs.items():
        parts = [f"{key} {spread([r.get(key) for r in rows])}" for key in keys]
        ratio = [r[keys[0]] / b[keys[0]] for r, b in zip(rows, runs[ref]) if r.get(keys[0]) and b.get(keys[0])]
        print(f"{load:9} {name:12} " + "  ".join(parts) + f"  x{ref} per round {spread(ratio)}", flush=True)


def main(argv=None) -> int:
    p = ab_options("python3 -m bench.tools.plainab", "26200-26299")
    p.add_argument("--loads", default="close", help="close,unloaded")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--refs", default="", help="comma list of haproxy, sslh-select, direct")
    p.add_argument("--count", type=int, default=300, help="sequential connections per unloaded run")
    o = p.parse_args(argv)
    ports = Ports(*(int(x) for x in o.ports.split("-")))
    tmp = tempfile.mkdtemp(prefix="epollmux-plainab-")
    trees = {"base": os.path.abspath(o.base), "work": os.path.abspath(o.work)}
    names = [*trees, *(r for r in o.refs.split(",") if r)]
    ref = names[2] if len(names) > 2 else "base"
    backend = Nginx(tmp, ports.take()).start()
    try:
        for load in o.loads.split(","):
            runs = {name: [] for name in names}
            for r in range(o.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                if r % 2:
                    order.reverse()
                for name in order:
                    subject = make(name, trees, tmp, ports.take(), backend, o.workers).start()
                    runs[name].append(one_run(subject, load, o.seconds, o.count))
            report(load, runs, ref)
        if o.cprofile:
            for name in trees:
                subject = TreePlain(tmp, ports.take(), backend.address, trees[name], True).start()
                print_calls(f"plain {name}:", measure(subject, lambda port: wrk(port, o.seconds, 32, close=True),
                                                      tmp, True), "connection")
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
