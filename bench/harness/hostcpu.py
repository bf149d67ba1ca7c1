"""Host CPU of one measurement: what the whole machine spent, split by who spent it.

Owns: `HostCPU` (a reading of /proc/stat and every process's /proc/PID/stat, both read by
bench.harness.procs, at the start of a run, `split()` at its end) and the split itself, a pure function
of two readings (`split_readings`).
Runs nothing and knows no subject: the caller says which processes are the relay and which are
the load (iperf3, this driver).

Why: a kernel relay (sockmap) moves the work out of the relay's processes. The redirect runs in
softirq context inside whatever task was running (often the sender's send() call), the transmit
in a kworker (`sk_psock_backlog`), receive processing also in ksoftirqd. With tick accounting
(no CONFIG_IRQ_TIME_ACCOUNTING) softirq time is charged to the task it interrupted. So the
relay's CPU alone says nothing for sockmap; only the machine's total, less unrelated work, is
comparable between direct, splice and sockmap.

The split (seconds over the run; every process counted as utime+stime+cutime+cstime, so a child
reaped during the run moves into its parent without being lost or counted twice):
- busy: all CPUs, /proc/stat less idle and iowait;
- relay: the given relay processes (or the caller's own figure, e.g. a cgroup's);
- load: the given load processes (the driver with the iperf3 clients it reaped, the server);
- kthreads: kernel threads (kthreadd and its children: kworker, ksoftirqd);
- unrelated: every other process (other work on a shared machine);
- interrupts: busy less all processes: interrupts and softirqs charged to no process (an idle
  CPU), plus processes that started and ended unseen by both readings (noise, either sign);
- kernel = kthreads + interrupts: what the kernel did outside any process we can name;
- host = busy - unrelated: what this measurement cost the machine, load and kernel included.
"""

from __future__ import annotations

from bench.harness.procs import HZ, machine_busy_ticks, processes

KTHREADD = 2


def split_readings(busy0: int, procs0: dict, busy1: int, procs1: dict,
                   relay: set[int], load: set[int]) -> dict[str, float]:
    """The split of the module docstring from two readings (ticks), in seconds. A process
    alive at the start only counts minus its start value (its time moved into its parent)."""
    parts = {"relay": 0, "load": 0, "kthreads": 0, "unrelated": 0}

    def kind(pid: int, ppid: int) -> str:
        if pid in relay:
            return "relay"
        if pid in load:
            return "load"
        if pid == KTHREADD or ppid == KTHREADD:
            return "kthreads"
        return "unrelated"

    for pid, (ppid, ticks) in procs1.items():
        parts[kind(pid, ppid)] += ticks - procs0.get(pid, (0, 0))[1]
    for pid, (ppid, ticks) in procs0.items():
        if pid not in procs1:
            parts[kind(pid, ppid)] -= ticks
    busy = busy1 - busy0
    out = {k: v / HZ for k, v in parts.items()}
    out["busy"] = busy / HZ
    out["interrupts"] = (busy - sum(parts.values())) / HZ
    out["kernel"] = out["kthreads"] + out["interrupts"]
    out["host"] = out["busy"] - out["unrelated"]
    return out


class HostCPU:
    """Start reading at construction; `split(relay_pids, load_pids, relay_cpu)` at the end of the
    run. relay_cpu, when given, replaces the relay's /proc sum (a cgroup also counts children
    that exited unseen); the difference is taken from `interrupts` so that the parts still add up."""

    def __init__(self):
        self.busy0, self.procs0 = machine_busy_ticks(), processes()

    def split(self, relay_pids: set[int], load_pids: set[int], relay_cpu: float | None = None) -> dict[str, float]:
        out = split_readings(self.busy0, self.procs0, machine_busy_ticks(), processes(), relay_pids, load_pids)
        if relay_cpu is not None:
            out["interrupts"] -= relay_cpu - out["relay"]
            out["kernel"] = out["kthreads"] + out["interrupts"]
            out["relay"] = relay_cpu
        return out
