"""A/B of two epollmux trees: `python3 -m bench.tools.ab --base DIR [--work DIR] [--loads ...]`.

Owns: short interleaved runs (base, work, work, base, ...) of one epollmux worker (1 worker, `probe = any`,
nginx behind) from each tree under one load at a time:
- connrate: plain TCP, `relay = splice` (as bench.peers.subjects.EpollmuxSplice), wrk `Connection: close`
  (unit: a connection); plainkeepalive: the same on 32 persistent connections (unit: a request);
  --base-relay/--work-relay set each tree's `relay` for the plain loads (one tree against itself: splice, adaptive);
- handshake, resumed, keepalive: TLS 1.3 terminated by epollmux (ECDSA P-256, as bench.tools.tlsprofile),
  wrk over https with `Connection: close` (resumption off or on) or on 32 persistent connections (unit: a request);
- bulk: TLS, 4 parallel curl downloads (unit: MB).
Per run: the worker's CPU µs per unit from /proc/PID/stat and the rate, and per round the work/base ratios; with --cprofile, one extra run per
tree counts Python-visible calls per unit (cProfile in the worker, as bench.tools.tlsprofile does; counts
only). Prints medians with min-max. Measures; changes nothing. The base tree is any checkout or
`git archive` of another commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from bench.harness.procs import Ports, cpu_seconds
from bench.peers import certs, tlsload
from bench.peers.backends import Nginx, SparseFile
from bench.peers.loadgen import wrk
from bench.peers.subjects import REPO, EpollmuxSplice, EpollmuxTLS
from bench.tools.tracers import cprofile_calls, cprofile_env, worker_pid

# load -> (TLS?, Connection: close?, resumption?)
LOADS = {"connrate": (False, True, False), "plainkeepalive": (False, False, False), "handshake": (True, True, False),
         "resumed": (True, True, True),
         "keepalive": (True, False, False), "bulk": (True, False, False)}


class Tree:
    """Mixed into a subject: run it from `tree` (its cwd and PYTHONPATH), optionally under cProfile."""

    def from_tree(self, tree: str, profile: bool):
        self.tree = self.cwd = tree
        self.profile = profile
        self.variant = ".".join(filter(None, (self.variant, os.path.basename(tree), str(self.port))))
        return self

    def env(self):
        env = dict(os.environ, PYTHONPATH=self.tree)
        return cprofile_env(env, self.tmpdir, self.port) if self.profile else env


class TreePlain(Tree, EpollmuxSplice):
    pass


class TreeTLS(Tree, EpollmuxTLS):
    pass


def measure(subject, run_load, tmp: str, profile: bool = False) -> dict:
    """Start-to-stop of one run: `run_load(port)` (a dict with `requests` and `rps`) against the started
    `subject`; the worker's CPU µs per unit, and with `profile` its Python calls per unit. Stops the subject."""
    try:
        time.sleep(0.5)
        worker = worker_pid(subject.pid)
        c0 = cpu_seconds(worker)
        res = run_load(subject.port)
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


def print_runs(label: str, runs: dict[str, list[dict]], unit: str) -> None:
    """Median worker µs per unit and rate of each tree's runs, with min-max."""
    for name, rows in runs.items():
        us = [x["us"] for x in rows if x["us"]]
        rps = [x["rps"] for x in rows if x["rps"]]
        if us:
            print(f"{label:9} {name}: worker {statistics.median(us):6.1f} µs/{unit} "
                  f"({min(us):.1f}-{max(us):.1f}), rate {statistics.median(rps):8.0f}/s "
                  f"({min(rps):.0f}-{max(rps):.0f})", flush=True)


def print_ratios(label: str, runs: dict[str, list[dict]]) -> None:
    """work / base per round (the two runs of a round are back to back, so the machine's load is
    nearly the same for both): median with min-max of the CPU per unit and of the rate."""
    pairs = [(b, w) for b, w in zip(runs.get("base", ()), runs.get("work", ())) if b["us"] and w["us"]]
    if not pairs:
        return
    cpu = [w["us"] / b["us"] for b, w in pairs]
    rate = [w["rps"] / b["rps"] for b, w in pairs if b["rps"] and w["rps"]]
    print(f"{label:9} work/base per round: CPU per unit ×{statistics.median(cpu):.3f} "
          f"({min(cpu):.3f}-{max(cpu):.3f}), rate ×{statistics.median(rate):.3f} "
          f"({min(rate):.3f}-{max(rate):.3f}), {len(pairs)} rounds", flush=True)


def print_calls(label: str, res: dict, unit: str) -> None:
    print(f"{label:9} {res.get('calls', 0):.1f} Python calls per {unit}", flush=True)
    for per, func in res.get("top", []):
        print(f"      {per:6.2f}  {func}")


def one_run(tree, load, seconds, tmp, ports, backend, cert, profile=False, relay="splice") -> dict:
    tls, close, resume = LOADS[load]

    def run_load(port: int) -> dict:
        if load == "bulk":
            res = tlsload.bulk(port, seconds, 4)
            res.update(requests=res.get("mb"), rps=res.get("mb_per_s"))
            return res
        return wrk(port, seconds, 32, close=close, scheme="https" if tls else "http")

    if tls:
        subject = TreeTLS(tmp, ports.take(), backend.address, cert, resume)
    else:
        subject = TreePlain(tmp, ports.take(), backend.address)
        subject.relay = relay
    return measure(subject.from_tree(tree, profile).start(), run_load, tmp, profile)


def unit(load: str) -> str:
    return "conn" if load == "connrate" else "MB" if load == "bulk" else "req"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.tools.ab")
    p.add_argument("--base", required=True)
    p.add_argument("--work", default=REPO)
    p.add_argument("--loads", default="connrate", help="comma list of " + ", ".join(LOADS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--ports", default="26100-26199")
    p.add_argument("--base-relay", default="splice")
    p.add_argument("--work-relay", default="splice")
    o = p.parse_args(argv)
    relays = {"base": o.base_relay, "work": o.work_relay}
    ports = Ports(*(int(x) for x in o.ports.split("-")))
    tmp = tempfile.mkdtemp(prefix="epollmux-ab-")
    cert = certs.make(tmp, "ecdsa")
    trees = {"base": os.path.abspath(o.base), "work": os.path.abspath(o.work)}
    with SparseFile() as bulk_file:
        backend = Nginx(tmp, ports.take(), bulk_file=bulk_file.path).start()
        try:
            for load in o.loads.split(","):
                runs = {name: [] for name in trees}
                for r in range(o.rounds):
                    for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                        runs[name].append(one_run(trees[name], load, o.seconds, tmp, ports, backend, cert,
                                                  relay=relays[name]))
                print_runs(load, runs, unit(load))
                print_ratios(load, runs)
                if o.cprofile:
                    for name in trees:
                        res = one_run(trees[name], load, o.seconds, tmp, ports, backend, cert, profile=True,
                                      relay=relays[name])
                        print_calls(f"{load} {name}:", res, unit(load))
        finally:
            backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
