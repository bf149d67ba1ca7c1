"""New connections, A/B: `python3 -m bench.tools.newconn --base DIR [--work DIR] [--loads close,unloaded] ...`.

Owns: short interleaved runs (the order rotated each round) of epollmux from two trees (`--relay`, default adaptive,
the daemon's default; `probe = any`, nginx behind, as bench.peers.subjects.EpollmuxSplice; `--workers N`), optionally beside reference subjects
(`--refs haproxy,sslh-select,direct`: HAProxy gets `nbthread` = the workers), in two loads:
- `close`: wrk `Connection: close` (a connection per request): the rate, and the CPU µs per connection of all
  the subject's processes (cgroup, else /proc) (bench.tools.ab counts Python calls per connection);
- `unloaded`: one connection at a time, connect to EOF (bench.sections.connrate.unloaded), p50 and p99.
Prints medians with min-max and, per round, the ratio of each subject to the first reference (or to base),
so that a shared machine's drift cancels. Measures; changes nothing. (bench.tools.ab: one worker's CPU under
every load, TLS included, and cProfile call counts.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from bench.peers.backends import Nginx
from bench.peers.loadgen import wrk
from bench.harness.procs import Ports
from bench.peers.subjects import REPO, Direct, Haproxy, SslhSelect
from bench.sections.connrate import unloaded
from bench.tools.ab import TreePlain


class HaproxyN(Haproxy):
    def __init__(self, tmpdir, port, backend, threads: int):
        super().__init__(tmpdir, port, backend)
        self.nbthread = threads
        self.variant = str(port)


def make(name: str, trees: dict, tmp: str, port: int, backend, workers: int, relay: str = "adaptive"):
    if name in trees:
        subject = TreePlain(tmp, port, backend.address, workers=workers)
        subject.relay = relay
        return subject.from_tree(trees[name], False)
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
    p = argparse.ArgumentParser(prog="python3 -m bench.tools.newconn")
    p.add_argument("--base", required=True)
    p.add_argument("--work", default=REPO)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--ports", default="26200-26299")
    p.add_argument("--loads", default="close", help="close,unloaded")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--relay", default="adaptive", help="epollmux's relay in both trees")
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
                    subject = make(name, trees, tmp, ports.take(), backend, o.workers, o.relay).start()
                    runs[name].append(one_run(subject, load, o.seconds, o.count))
            report(load, runs, ref)
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
