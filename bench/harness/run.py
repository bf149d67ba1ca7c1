"""The benchmark driver: `python3 -m bench.harness.run [--quick] [--sections ...] [--repeat N] ...`.

Owns: options, the run's time budget (every section checks it before each measurement, so a run
ends in bounded time: at most 25 min by default, ~3 min with --quick), the temp dir, the machine
and version record, and handing the results to bench.harness.report. Sections run one after another:
bulk (iperf3), connrate (nginx + wrk), idle (held connections), sniff (probe decision cost, SNI
routing under load), tls (TLS termination beside stunnel and HAProxy), udp (UDP flows beside socat and direct).
"""

from __future__ import annotations

import os as _os
import sys as _sys

if not __package__:   # run as a script (python3 bench/run.py): import the package from the repo root
    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

from bench.sections import bulk, connrate, idle, sniff, tls, udp
from bench.harness import report
from bench.peers import subjects
from bench.harness.context import Context
from bench.harness.procs import CpuGroup, Ports

SECTIONS = {"bulk": bulk.run_section, "connrate": connrate.run_section, "idle": idle.run_section,
            "sniff": sniff.run_section, "tls": tls.run_section, "udp": udp.run_section}
KNOWN = subjects.ALL
DEFAULT = subjects.DEFAULT
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bench/

NOTES = [
    "Everything runs on 127.0.0.1 on this one machine: load generator, subject and backend share its CPUs, "
    "so Gbit/s is bounded by the machine; Gbit per proxy CPU-second is the fairer comparison.",
    "Subjects forward every connection to one backend without sniffing (`probe = any`, sslh `--anyprot`).",
    "epollmux runs `workers = 1` (one event loop, plus its supervisor process, counted too), so HAProxy runs "
    "`nbthread 1`; "
    "HAProxy: TCP mode, `option splice-request` + `option splice-response`, `tune.pipesize` 1 MiB = "
    "epollmux's default `pipe_size`, `maxconn 9000`, `maxpipes 512`.",
    "sslh 1.20 (Debian): sslh-fork is /usr/sbin/sslh (a process per connection), sslh-select is single-process "
    "select(); both run `-f` (foreground, connection log lines to a file). socat runs `fork` with its default "
    "8 KiB buffer.",
    "Proxy CPU = user+system time of every process of the subject, exited children included: each subject runs "
    "in its own cgroup-v1 cpuacct group when that hierarchy is writable (`cpu_accounting` in bench.json says "
    "which method ran).",
    "Each measurement is repeated (`--repeat`); tables give the median and the min–max range. Subjects are "
    "measured in turn, with the order rotated each round, all started at once in front of the same backend.",
    "Idle: memory per connection = (RSS or PSS with all held − baseline after a 16-connection warm-up) / held; "
    "kernel socket buffers are not in RSS.",
    "Sniff: the decision cost is timed in a fresh interpreter on the captured fixtures (no I/O); the SNI routers "
    "pass TLS through to nginx, which terminates it; wrk resumes sessions there, as a browser would.",
    "TLS: TLS 1.3 only, the ciphers each side picks by default (all subjects negotiated the same suite, see the "
    "checks table); no client verifies the self-signed certificates (wrk, curl -k), so the clients' cost is the "
    "same for every subject. epollmux terminates on a `probe = any` route (no sniffing), `workers = 1`; HAProxy "
    "`bind ... ssl crt`, TCP mode, `nbthread 1`; stunnel as shipped (a thread per connection). Resumption off: "
    "epollmux `tls_resumption = no`, HAProxy `no-tls-tickets` + `tune.ssl.cachesize 0`, stunnel "
    "`sessionResume = no`, nginx `ssl_session_tickets off` + `ssl_session_cache off`; the checks table shows none "
    "of them resumed. Load generator, terminator and nginx share the machine's 2 CPUs, and a full handshake costs "
    "the client about as much as the server: compare the per-CPU-second columns, not only the rates.",
]


def options(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.harness.run", description="epollmux beside its peers")
    p.add_argument("--quick", action="store_true", help="1 run each, short durations, ~3 minutes")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ",".join(SECTIONS))
    p.add_argument("--subjects", default=",".join(DEFAULT),
                   help="comma list of " + ",".join(KNOWN) + " (default: all but epollmux-splice-2w, epollmux-sockmap and the 2-worker/2-thread TLS pair); "
                   "each section measures those of them it knows")
    p.add_argument("--repeat", type=int, help="runs per measurement (default 3, quick 1)")
    p.add_argument("--bulk-seconds", type=float, help="iperf3 duration (default 5, quick 2)")
    p.add_argument("--streams", default="1,4", help="iperf3 parallel stream counts")
    p.add_argument("--rate-seconds", type=float, help="wrk duration (default 4, quick 2)")
    p.add_argument("--rate-connections", type=int, default=32, help="wrk connections")
    p.add_argument("--latency-count", type=int, help="sequential connections for unloaded latency (default 500)")
    p.add_argument("--idle-n", type=int, help="idle connections to hold (default 9000, quick 2000)")
    p.add_argument("--tls-seconds", type=float, help="duration of each TLS run (default 3, quick 1)")
    p.add_argument("--tls-streams", type=int, default=4, help="parallel curl downloads in TLS bulk runs")
    p.add_argument("--udp-rates", help="iperf3 -u rates for one flow (default 50M,200M, quick 50M)")
    p.add_argument("--udp-flow-rates", help="total datagrams/s over the many flows (default 5000,20000, quick 5000)")
    p.add_argument("--udp-flows", type=int, default=1000, help="flows of the many-flow UDP runs")
    p.add_argument("--udp-seconds", type=float, help="duration of each UDP run (default 4, quick 2)")
    p.add_argument("--udp-held", type=int, help="UDP flows held for the memory figure (default 5000, quick 2000)")
    p.add_argument("--budget", type=float, help="seconds the whole run may take (default 1500, quick 200)")
    p.add_argument("--ports", default="25000-25999", help="port range to use on 127.0.0.1")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for JSON, tables, charts")
    p.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"))
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs of the run")
    p.add_argument("--from-json", metavar="FILE", help="measure nothing: rewrite the reports from a bench.json")
    o = p.parse_args(argv)
    q = o.quick
    o.repeat = o.repeat or (1 if q else 3)
    o.bulk_seconds = o.bulk_seconds or (2 if q else 5)
    o.rate_seconds = o.rate_seconds or (2 if q else 4)
    o.latency_count = o.latency_count or (200 if q else 500)
    o.idle_n = o.idle_n or (2000 if q else 9000)
    o.tls_seconds = o.tls_seconds or (1 if q else 3)
    o.budget = o.budget or (200 if q else 1500)
    o.udp_rates = o.udp_rates or ("50M" if q else "50M,200M")
    o.udp_flow_rates = o.udp_flow_rates or ("5000" if q else "5000,20000")
    o.udp_seconds = o.udp_seconds or (2 if q else 4)
    o.udp_held = o.udp_held or (2000 if q else 5000)
    o.sections = [s for s in o.sections.split(",") if s]
    o.subjects = [s for s in o.subjects.split(",") if s]
    o.streams = [int(s) for s in o.streams.split(",")]
    for s in o.sections:
        if s not in SECTIONS:
            p.error(f"unknown section {s}")
    for s in o.subjects:
        if s not in KNOWN:
            p.error(f"unknown subject {s}")
    return o


def machine() -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gb": mem_kb / 2**20, "kernel": platform.release(),
            "python": platform.python_version(), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def rerender(opts) -> int:
    """Rewrite tables, charts and RESULTS.md from a saved bench.json (e.g. after a report change)."""
    with open(opts.from_json) as f:
        results = json.load(f)
    results["notes"] = NOTES
    for path in report.write(results, opts.out, opts.results_md):
        print(f"wrote {os.path.relpath(path)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = options(argv)
    if opts.from_json:
        return rerender(opts)
    first, last = (int(x) for x in opts.ports.split("-"))
    CpuGroup.sweep_stale()
    started_at = time.time()
    t0 = time.monotonic()
    tmpdir = tempfile.mkdtemp(prefix="epollmux-bench-")
    ctx = Context(tmpdir=tmpdir, ports=Ports(first, last), opts=opts, deadline=t0 + opts.budget)
    results = {"argv": argv, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started_at)),
               "machine": machine(), "versions": subjects.versions(), "notes": NOTES, "sections": []}
    ctx.log(f"sections {opts.sections}, subjects {opts.subjects}, repeat {opts.repeat}, "
            f"budget {opts.budget:.0f}s, logs in {tmpdir}")
    try:
        for name in opts.sections:
            ctx.log(f"section {name}")
            ctx.start_errors.clear()
            results["sections"].append(SECTIONS[name](ctx))
    except KeyboardInterrupt:
        ctx.log("interrupted: writing what was measured")
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    end_version = subjects.versions()["epollmux"]
    if end_version != results["versions"]["epollmux"]:     # the tree changed under the run (shared checkout)
        results["epollmux_at_end"] = end_version
    results["wall_seconds"] = time.monotonic() - t0
    results["machine"]["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for path in report.write(results, opts.out, opts.results_md):
        ctx.log(f"wrote {os.path.relpath(path)}")
    for sec in results["sections"]:
        print(f"\n## {report.TITLES[sec['section']]}\n\n{report.MD[sec['section']](sec)}")
    if opts.keep_tmp:
        ctx.log(f"kept {tmpdir}")
    else:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
