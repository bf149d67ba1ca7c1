"""Profile epollmux's hot paths: `python3 -m bench.tools.hotpaths [--seconds S] [--out DIR]`.

Owns: one profiling pass over an epollmux worker (the default relay, adaptive; 1 worker) under three loads:
- bulk: iperf3, 1 stream, through epollmux;
- connrate: wrk with `Connection: close` to nginx through epollmux;
- keepalive: wrk on persistent connections to nginx through epollmux (small exchanges).
For each load, two separate runs (so neither tool distorts the other's numbers):
- py-spy (sampling at 200 Hz, idle samples dropped, so shares are of the worker's busy time)
  attached to the worker: self and inclusive shares per Python function and per source line,
  beside the worker's CPU seconds (user and system) over the same load;
- strace -c attached to the worker: the count of every syscall, divided by the connections
  served (wrk's request count) or the megabytes relayed (iperf3's byte count); the same for
  HAProxy (nbthread 1) and sslh-select, for comparison.
Writes DIR/hotpaths.json and DIR/hotpaths.md (raw figures; bench/PROFILE.md is the reading of them).
Needs py-spy (pip) and strace; a missing tool skips its runs. Attaching needs ptrace rights. The tracers and the
frame of the pass are bench.tools.tracers'; this module owns the loads, the plan and the report.
"""

from __future__ import annotations

import json
import shutil
import sys

from bench.peers.backends import Iperf3, Nginx
from bench.peers.loadgen import iperf3, wrk
from bench.peers.subjects import EpollmuxAdaptive, Haproxy, SslhSelect
from bench.tools.tracers import options, pyspy, pyspy_tables, run_plan, strace, strace_table, write


def load(kind: str, port: int, seconds: float) -> dict:
    """Run one load; the result names its unit and how many units it moved ("units")."""
    if kind == "bulk":
        res = iperf3(port, seconds, 1)
        res["mb"] = res.get("bytes", 0) / 1e6
        res.update(unit="MB", units=res["mb"])
        return res
    res = wrk(port, seconds, 32, close=kind == "connrate")
    if kind == "keepalive":
        res.update(unit="request", units=res.get("requests", 0))
        return res
    res["connections"] = res.get("requests", 0)
    res.update(unit="connection", units=res["connections"])
    return res


def report_md(results: dict) -> str:
    lines = ["# epollmux hot paths (raw figures of `python3 -m bench.tools.hotpaths`)", "",
             f"epollmux relay = {results.get('relay', 'splice')}, 1 worker.", ""]
    for kind, runs in results["loads"].items():
        lines += [f"## {kind}", ""]
        sp = runs.get("pyspy", {})
        if sp.get("samples"):
            lines += [f"py-spy: {sp['samples']} busy samples at 200 Hz (idle dropped); load and worker CPU: "
                      f"{json.dumps({k: v for k, v in sp['load'].items() if not isinstance(v, dict)})}", ""]
            lines += pyspy_tables(sp)
        for key, who in (("strace", "epollmux"), ("strace-haproxy", "HAProxy (for comparison)"),
                         ("strace-sslh", "sslh-select (for comparison)")):
            st = runs.get(key, {})
            if not st.get("calls"):
                continue
            lines += [f"strace -c on {who} (separate run): syscalls per {st['unit']}; load: "
                      f"{json.dumps({k: v for k, v in st['load'].items() if not isinstance(v, dict)})}", ""]
            lines += strace_table(st)
    return "\n".join(lines)


def main(argv=None) -> int:
    o, ports, tmp = options("hotpaths", ("bulk", "connrate", "keepalive"), argv)
    results = {"seconds": o.seconds, "relay": EpollmuxAdaptive.relay, "loads": {}}
    plan = (("pyspy", "py-spy", EpollmuxAdaptive, pyspy), ("strace", "strace", EpollmuxAdaptive, strace),
            ("strace-haproxy", "strace", Haproxy, strace), ("strace-sslh", "strace", SslhSelect, strace))
    for kind, backend_cls in (("bulk", Iperf3), ("connrate", Nginx), ("keepalive", Nginx)):
        if kind not in o.loads.split(","):
            continue
        backend = backend_cls(tmp, ports.take()).start()
        try:
            results["loads"][kind] = run_plan("hotpaths", plan, kind,
                                              lambda cls: cls(tmp, ports.take(), backend.address), o.seconds, tmp,
                                              load)
        finally:
            backend.stop()
    write(o.out, "hotpaths", results, report_md(results))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
