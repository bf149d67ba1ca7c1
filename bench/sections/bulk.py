"""Bulk throughput: iperf3 with 1 and N parallel streams through each subject.

Owns: the bulk section. One iperf3 server on loopback; every subject is started in front of it
at once (idle subjects cost nothing) and measured in turn, round after round, with the subject
order rotated each round so that drift on a shared machine does not favour one position.
Per run: Gbit/s received (iperf3 -J `sum_received`), the subject's CPU seconds over the run
(all its processes, `Subject.cpu()`) and the user-mode share of them, Gbit per proxy
CPU-second, and the machine's CPU split by `hostcpu.HostCPU`: host CPU-s (the whole machine less
unrelated processes: the relay, iperf3 and the kernel's work for them, the one figure comparable
between direct, splice and sockmap, whose work runs in kworkers and softirqs), its kernel part
(kernel threads and interrupts charged to no process), and unrelated CPU-s (other work on a
shared machine, which makes a sample less trustworthy).
"""

from __future__ import annotations

import os
import subprocess
import time

from bench.harness import stats
from bench.harness.hostcpu import HostCPU
from bench.peers.backends import Iperf3
from bench.peers.loadgen import iperf3
from bench.harness.context import Context, started
from bench.harness.procs import tree_pids

SUBJECTS = ["direct", "epollmux-adaptive", "epollmux-splice", "epollmux-copy", "haproxy", "sslh-select", "sslh-fork", "socat",
            "epollmux-splice-2w", "haproxy-2t", "epollmux-sockmap"]
REFERENCE = "haproxy"


def measure(ctx: Context, subject, seconds: float, streams: int, backend_pid: int | None = None) -> dict:
    if not subject.alive():
        return {"error": "subject not running"}
    relay_pids = set(tree_pids(subject.pid)) if subject.pid else set()
    host = HostCPU()
    cpu0, user0, t0 = subject.cpu(), subject.cpu_user(), time.monotonic()
    try:
        res = iperf3(subject.port, seconds, streams)
        if "error" in res and "busy" in res["error"]:   # the server still ends the last test
            time.sleep(1.0)
            res = iperf3(subject.port, seconds, streams)
    except subprocess.TimeoutExpired:
        res = {"error": "iperf3 timed out"}
    time.sleep(0.1)       # let the relay finish its last close before reading its CPU
    cpu = subject.cpu() - cpu0
    user = subject.cpu_user() - user0
    if subject.pid:
        relay_pids |= set(tree_pids(subject.pid))
    load_pids = {os.getpid(), *(tree_pids(backend_pid) if backend_pid else ())}   # the driver: iperf3 -c reaped
    split = host.split(relay_pids, load_pids, cpu if subject.pid else 0.0)
    res.update(user_share=user / cpu if cpu > 0 else None, wall_s=time.monotonic() - t0,
               cpu_s=cpu if subject.pid else None, host_cpu_s=split["host"], kernel_cpu_s=split["kernel"],
               load_cpu_s=split["load"], unrelated_cpu_s=split["unrelated"], host_split=split)
    if "error" not in res:
        res["gbps"] = res["bits_per_second"] / 1e9
        res["gbit_per_cpu_s"] = res["bytes"] * 8 / 1e9 / cpu if subject.pid and cpu > 0 else None
        res["gbit_per_host_cpu_s"] = res["bytes"] * 8 / 1e9 / split["host"] if split["host"] > 0 else None
    if not subject.alive():
        res["error"] = res.get("error", "") + " subject died"
    return res


def run_section(ctx: Context) -> dict:
    opts = ctx.opts
    names = [n for n in opts.subjects if n in SUBJECTS]
    streams_list = opts.streams
    seconds = opts.bulk_seconds
    samples = []
    backend = Iperf3(ctx.tmpdir, ctx.ports.take()).start()
    try:
        with started(ctx, names, backend.address) as running:
            order = [n for n in names if n in running]
            for rep in range(opts.repeat):
                rotated = order[rep % len(order):] + order[:rep % len(order)] if order else []
                for streams in streams_list:
                    for name in rotated:
                        if not ctx.has_time(seconds + 5):
                            ctx.log("bulk: out of time budget, skipping the rest")
                            samples.append({"subject": name, "streams": streams, "rep": rep,
                                            "error": "skipped: time budget"})
                            continue
                        res = measure(ctx, running[name], seconds, streams, backend.proc.pid)
                        res.update(subject=name, streams=streams, rep=rep)
                        samples.append(res)
                        ctx.log(f"bulk {name:16} P={streams} rep={rep}: " + (
                            f"{res['gbps']:.2f} Gbit/s, cpu {res['cpu_s'] or 0:.2f}s, host {res['host_cpu_s']:.2f}s "
                            f"(kernel {res['kernel_cpu_s']:.2f}s, unrelated {res['unrelated_cpu_s']:.2f}s)" if "gbps" in res
                            else f"ERROR {res['error']}"))
            cpu_methods = {n: running[n].cpu_method for n in order}
    finally:
        backend.stop()
    return {"section": "bulk", "params": {"seconds": seconds, "streams": streams_list,
                                          "repeat": opts.repeat, "subjects": names,
                                          "cpu_accounting": cpu_methods,
                                          "start_errors": {n: e for n, e in ctx.start_errors.items()
                                                           if n in names}},
            "samples": samples, "summary": summarize(names, streams_list, samples)}


def summarize(names: list[str], streams_list: list[int], samples: list[dict]) -> list[dict]:
    rows = []
    for streams in streams_list:
        block = {}
        for name in names:
            mine = [s for s in samples if s["subject"] == name and s["streams"] == streams]
            ok = [s for s in mine if "gbps" in s]
            block[name] = {
                "subject": name, "streams": streams,
                "gbps": stats.summary([s["gbps"] for s in ok]),
                "cpu_s": stats.summary([s["cpu_s"] for s in ok]),
                "gbit_per_cpu_s": stats.summary([s["gbit_per_cpu_s"] for s in ok]),
                "user_share": stats.summary([s.get("user_share") for s in ok]),
                "host_cpu_s": stats.summary([s.get("host_cpu_s") for s in ok]),
                "kernel_cpu_s": stats.summary([s.get("kernel_cpu_s") for s in ok]),
                "gbit_per_host_cpu_s": stats.summary([s.get("gbit_per_host_cpu_s") for s in ok]),
                "unrelated_cpu_s": stats.summary([s.get("unrelated_cpu_s") for s in ok]),
                "errors": len(mine) - len(ok),
            }
        ref = block.get(REFERENCE)
        for row in block.values():
            row["gbps_vs_ref"] = stats.ratio(row["gbps"], ref["gbps"]) if ref else None
            row["eff_vs_ref"] = stats.ratio(row["gbit_per_cpu_s"], ref["gbit_per_cpu_s"]) if ref else None
            rows.append(row)
    return rows
