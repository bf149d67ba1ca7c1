"""bench/hostcpu.py: the split of a run's host CPU that makes the kernel relay's cost visible.

The split is a pure function of two readings, tested with made-up ones; one test reads the real
machine around work done in a child process, which must land in `load`, not `unrelated`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.daemon import REPO

sys.path.insert(0, str(REPO))
from bench.harness import hostcpu  # noqa: E402

HZ = hostcpu.HZ


def test_split_names_who_spent_what():
    relay, load, kworker, other = 100, 200, 300, 400
    before = {relay: (1, 10), load: (1, 10), kworker: (2, 5), other: (1, 0), 2: (0, 0)}
    after = {relay: (1, 10 + HZ), load: (1, 10 + 2 * HZ), kworker: (2, 5 + HZ), other: (1, 3 * HZ), 2: (0, 0)}
    busy = 8 * HZ                     # 1 + 2 + 1 + 3 in processes, 1 s charged to none
    out = hostcpu.split_readings(0, before, busy, after, {relay}, {load})
    assert out["relay"] == 1 and out["load"] == 2 and out["kthreads"] == 1 and out["unrelated"] == 3
    assert out["interrupts"] == 1 and out["kernel"] == 2
    assert out["host"] == 5           # busy less unrelated: relay + load + kernel


def test_a_reaped_child_moves_into_its_parent_without_being_counted_twice():
    parent, child = 10, 11
    before = {parent: (1, 0), child: (parent, 2 * HZ)}         # the child had run 2 s before the run
    after = {parent: (1, 5 * HZ)}                               # reaped: its 5 s are in the parent's cutime
    out = hostcpu.split_readings(0, before, 3 * HZ, after, set(), {parent, child})
    assert out["load"] == 3 and out["interrupts"] == 0


def test_relay_cpu_from_elsewhere_keeps_the_parts_adding_up():
    h = hostcpu.HostCPU()
    out = h.split(set(), set(), relay_cpu=0.5)
    assert out["relay"] == 0.5
    parts = out["relay"] + out["load"] + out["kthreads"] + out["unrelated"] + out["interrupts"]
    assert parts == pytest.approx(out["busy"], abs=1e-9)


def test_real_machine_work_of_a_child_is_load():
    h = hostcpu.HostCPU()
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.3: pass"], check=True, timeout=30)
    out = h.split(set(), {os.getpid()})
    assert out["load"] >= 0.25        # the child's 0.3 s, reaped into this process
    assert out["host"] >= out["load"] - 0.05
