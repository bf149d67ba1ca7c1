"""Paced bulk through the kernel relay: `python3 -m bench.tools.pacedrelay [--repeat N] [--seconds S]` prints
one JSON line per run and the count of `kernel-backlog` cuts.

Owns: one iperf3 server, two epollmux daemons (relay = splice and relay = sockmap, one worker each) on
127.0.0.1 ports the kernel picks free, and interleaved iperf3 runs paced with `-b` (1 Gbit/s on one
stream, 4 x 0.5 Gbit/s, then the kernel relay alone at 2 and 4 Gbit/s): Gbit/s received, the daemon's
CPU-s (its processes' utime+stime) and iperf3's error if the relay cut the run. Why paced: without
backpressure the kernel relay ends a connection whose kernel backlog passes 64 MiB (README, "Kernel
relay"), and an unpaced loopback sender outruns the kernel's transmit. Ends what it starts by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAN = (("splice", "1G", 1), ("sockmap", "1G", 1), ("splice", "0.5G", 4), ("sockmap", "0.5G", 4),
        ("sockmap", "2G", 1), ("sockmap", "4G", 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [pid] + [int(x) for x in out.split()]


def start_daemon(tmp: str, relay: str, backend: int) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    conf, log = os.path.join(tmp, f"{relay}.conf"), os.path.join(tmp, f"{relay}.log")
    with open(conf, "w") as f:
        f.write(f"[global]\nrelay = {relay}\nworkers = 1\nlog_level = info\n[listen]\n  [[b]]\n"
                f"  address = 127.0.0.1:{port}\n[routes]\n  [[all]]\n  probe = any\n  backend = 127.0.0.1:{backend}\n")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "epollmux", "-c", conf], stdout=out, stderr=out, cwd=ROOT)
    return proc, port, log


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    o = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="epollmux-paced-")
    backend = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(backend)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemons = {}
    try:
        for relay in ("splice", "sockmap"):
            daemons[relay] = start_daemon(tmp, relay, backend)
        for _, port, _ in daemons.values():
            wait_port(port)
        for rep in range(o.repeat):
            for relay, rate, streams in PLAN:
                proc, port, _ = daemons[relay]
                pids = tree(proc.pid)
                before = cpu_s(pids)
                run = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(o.seconds), "-b", rate,
                                      "-P", str(streams), "-J"], capture_output=True, text=True, timeout=o.seconds + 30)
                used = cpu_s(pids) - before
                try:
                    result = json.loads(run.stdout)
                    error = result.get("error")
                    gbps = None if error else result["end"]["sum_received"]["bits_per_second"] / 1e9
                except (ValueError, KeyError) as exc:
                    error, gbps = str(exc), None
                print(json.dumps({"rep": rep, "relay": relay, "rate": rate, "streams": streams,
                                  "gbps": gbps and round(gbps, 3), "daemon_cpu_s": round(used, 3), "error": error}),
                      flush=True)
                time.sleep(1)
        cuts = {}
        for relay, (_, _, log) in daemons.items():
            with open(log) as f:
                cuts[relay] = len(re.findall(r"reason=kernel-backlog", f.read()))
        print(json.dumps({"kernel_backlog_cuts": cuts}))
    finally:
        for proc, _, _ in daemons.values():
            proc.terminate()
        server.terminate()
        for proc, _, _ in daemons.values():
            proc.wait(15)
        server.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
