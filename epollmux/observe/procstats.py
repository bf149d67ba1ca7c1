"""The standard `process_*` metrics (as every Prometheus client library exports them), read from /proc for
the daemon's processes: the supervisor and its workers, summed, since they serve as one.

Owns: reading /proc/PID/stat, /proc/PID/fd and /proc/PID/limits, and the families' values
(process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
process_open_fds, process_max_fds, process_start_time_seconds). A process gone or unreadable between
listing and reading is skipped. Must not import anything of epollmux.
"""

from __future__ import annotations

import os

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3, state, is index 0)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _max_fds(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return int(soft) if soft.isdigit() else 0
    return 0


def families(main: int, others: list[int]) -> dict:
    """Snapshot families for the process `main` (start time, fd limit) plus `others` (summed in)."""
    cpu = rss = vsize = fds = 0
    for pid in [main, *others]:
        try:
            fields = _stat(pid)
            count = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / TICKS       # utime + stime
        vsize += int(fields[20])
        rss += int(fields[21]) * PAGE
        fds += count
    try:
        start = _boot_time() + int(_stat(main)[19]) / TICKS
        max_fds = _max_fds(main)
    except (OSError, ValueError):
        start, max_fds = 0.0, 0
    return {
        "process_cpu_seconds_total": {(): round(cpu, 2)},
        "process_resident_memory_bytes": {(): rss},
        "process_virtual_memory_bytes": {(): vsize},
        "process_open_fds": {(): fds},
        "process_max_fds": {(): max_fds},
        "process_start_time_seconds": {(): round(start, 2)},
    }
