"""A/B of two epollmux trees on plain connections: `python3 -m bench.tools.plainab --base DIR [--work DIR] ...`.

Owns: short interleaved runs (base, work, work, base, ...) of one epollmux worker (`relay = splice`, `probe = any`,
nginx behind, as bench.peers.subjects.EpollmuxSplice) under wrk `Connection: close` (a connection per request). Per run:
the worker's CPU µs per connection from /proc/PID/stat and the rate; with --cprofile, one extra run per tree
counts Python-visible calls per connection (as bench.tools.tlsab). Prints medians with min-max. Measures; changes nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile

from bench.peers.backends import Nginx
from bench.peers.loadgen import wrk
from bench.harness.procs import Ports
from bench.peers.subjects import EpollmuxSplice
from bench.tools.tlsab import ab_options, measure, print_calls, print_runs
from bench.tools.tlsprofile import cprofile_env


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
    return measure(subject, lambda port: wrk(port, seconds, 32, close=True), tmp, profile)


def main(argv=None) -> int:
    o = ab_options("python3 -m bench.tools.plainab", "26200-26299").parse_args(argv)
    ports = Ports(*(int(x) for x in o.ports.split("-")))
    tmp = tempfile.mkdtemp(prefix="epollmux-plainab-")
    trees = {"base": os.path.abspath(o.base), "work": os.path.abspath(o.work)}
    backend = Nginx(tmp, ports.take()).start()
    try:
        runs = {name: [] for name in trees}
        for r in range(o.rounds):
            for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                runs[name].append(one_run(trees[name], o.seconds, tmp, ports, backend))
        print_runs("plain", runs, "conn")
        if o.cprofile:
            for name in trees:
                print_calls(f"plain {name}:", one_run(trees[name], o.seconds, tmp, ports, backend, profile=True),
                            "connection")
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
