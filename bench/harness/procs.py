"""Processes and ports for the benchmarks: start, wait until listening, measure, stop by PID.

Owns: the port allocator (a fixed range, each port checked free by binding it), `Proc` (a child
process with its log file, ended by PID: SIGTERM, then SIGKILL, then any descendants it left
behind, each by its own PID), CPU accounting and readings from /proc.

CPU of a subject: when the cgroup-v1 `cpuacct` hierarchy is writable, each subject runs in its
own cgroup (`CpuGroup`, created under /sys/fs/cgroup/cpuacct/epollmux-bench.PID and removed at
the end) and `cpuacct.usage` counts every process it ever had, exited children included.
Otherwise the fallback sums utime+stime+cutime+cstime over the live process tree, which misses
children that were auto-reaped (sslh-fork ignores SIGCHLD): results say which method ran.
Memory: RSS/PSS of a tree (smaps_rollup). Listening ports: /proc/net/tcp, no probe connection.
Never signals a process it did not start; never uses pkill/killall.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time

HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
HOST = "127.0.0.1"


class Ports:
    """Hands out ports from [first, last], skipping any that cannot be bound right now."""

    def __init__(self, first: int = 25000, last: int = 25999):
        self.first, self.last = first, last
        self.next = first

    def take(self) -> int:
        for _ in range(self.last - self.first + 1):
            port = self.next
            self.next = self.first if port >= self.last else port + 1
            if port_free(port):
                return port
        raise RuntimeError(f"no free port in {self.first}-{self.last}")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def listening_ports() -> set[int]:
    """Ports in LISTEN state on 127.0.0.1 or any address (read from /proc, no connection made)."""
    ports = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state = fields[1], fields[3]
            ip, port = local.split(":")
            if state == "0A" and ip in ("0100007F", "00000000"):
                ports.add(int(port, 16))
    return ports


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (index 0 = state, 1 = ppid, 11..14 =
    utime stime cutime cstime), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks of the process and its reaped children) for every process alive."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := stat_fields(name)) is not None:
            out[int(name)] = (int(fields[1]), sum(int(fields[i]) for i in (11, 12, 13, 14)))
    return out


def children_of() -> dict[int, list[int]]:
    """ppid -> [pid] for every process now alive."""
    tree: dict[int, list[int]] = {}
    for pid, (ppid, _) in processes().items():
        tree.setdefault(ppid, []).append(pid)
    return tree


def tree_pids(pid: int) -> list[int]:
    """pid and all its live descendants."""
    kids = children_of()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pid: int, user_only: bool = False) -> float:
    """CPU seconds (user+system) used by pid's tree so far, reaped children included."""
    ticks = 0
    for p in tree_pids(pid):
        fields = stat_fields(p)
        if fields is None:
            continue
        ticks += sum(int(fields[i]) for i in ((11, 13) if user_only else (11, 12, 13, 14)))
    return ticks / HZ


def memory_kb(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private pages), in kB, summed over pid's tree, plus its process count.

    RSS counts a page shared by two processes of the tree twice; PSS splits it; USS leaves it out.
    """
    rss = pss = uss = n = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                        uss += int(line.split()[1])
            n += 1
        except OSError:
            continue
    return {"rss_kb": rss, "pss_kb": pss, "uss_kb": uss, "processes": n}


def machine_busy_ticks() -> int:
    """Busy CPU ticks of the whole machine so far (all CPUs, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]


def machine_cpu_seconds() -> float:
    return machine_busy_ticks() / HZ


CGROUP_ROOT = "/sys/fs/cgroup/cpuacct"


class CpuGroup:
    """A cpuacct cgroup of our own for one subject; None from `make` if the hierarchy is absent."""

    def __init__(self, path: str):
        self.path = path

    @staticmethod
    def sweep_stale() -> None:
        """Remove groups left by bench runs that died (their PID is gone and no task is left)."""
        try:
            names = os.listdir(CGROUP_ROOT)
        except OSError:
            return
        for name in names:
            if not name.startswith("epollmux-bench.") or os.path.exists(f"/proc/{name.split('.', 1)[1]}"):
                continue
            parent = os.path.join(CGROUP_ROOT, name)
            for sub in os.listdir(parent):
                if os.path.isdir(os.path.join(parent, sub)):
                    try:
                        os.rmdir(os.path.join(parent, sub))
                    except OSError:
                        pass
            try:
                os.rmdir(parent)
            except OSError:
                pass

    @classmethod
    def make(cls, name: str) -> "CpuGroup | None":
        parent = os.path.join(CGROUP_ROOT, f"epollmux-bench.{os.getpid()}")
        try:
            os.makedirs(os.path.join(parent, name), exist_ok=True)
        except OSError:
            return None
        return cls(os.path.join(parent, name))

    def enter(self) -> None:
        """Move the calling process into the group (runs in the child before exec)."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def seconds(self) -> float:
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9

    def user_seconds(self) -> float:
        with open(os.path.join(self.path, "cpuacct.stat")) as f:
            for line in f:
                key, value = line.split()
                if key == "user":
                    return int(value) / HZ
        return 0.0

    def remove(self) -> None:
        for path in (self.path, os.path.dirname(self.path)):
            try:
                os.rmdir(path)
            except OSError:
                pass   # still has tasks (then it is tiny and harmless) or siblings


class OtherLoad:
    """CPU the rest of the machine used during one measurement: busy time of all CPUs minus the
    subject's, the backend's, the load generator's (reaped children) and this process's own.
    Other work on a shared machine shows here; it says how much to trust a sample."""

    def __init__(self, backend_pid: int | None):
        self.backend_pid = backend_pid
        self.start = self._ours()

    def _ours(self) -> tuple[float, float]:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        own = kids.ru_utime + kids.ru_stime + me.ru_utime + me.ru_stime
        if self.backend_pid:
            own += cpu_seconds(self.backend_pid)
        return machine_cpu_seconds(), own

    def seconds(self, subject_cpu: float) -> float:
        machine, own = self._ours()
        return max(0.0, (machine - self.start[0]) - (own - self.start[1]) - subject_cpu)


class Proc:
    """A child process started by the benchmark and ended by its PID."""

    def __init__(self, name: str, argv: list[str], logdir: str, cwd: str | None = None,
                 env: dict | None = None, stdin=subprocess.DEVNULL, cgroup: CpuGroup | None = None):
        self.name = name
        self.argv = argv
        self.cgroup = cgroup
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, stdin=stdin, stdout=self.log, stderr=subprocess.STDOUT,
                                      cwd=cwd, env=env, preexec_fn=cgroup.enter if cgroup else None)
        self.pid = self.popen.pid

    def cpu(self) -> float:
        """CPU seconds of this process and everything it started (see the module docstring)."""
        return self.cgroup.seconds() if self.cgroup else cpu_seconds(self.pid)

    def cpu_user(self) -> float:
        return self.cgroup.user_seconds() if self.cgroup else cpu_seconds(self.pid, user_only=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port in listening_ports():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}: {self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not listening on {port} after {timeout}s: {self.tail()}")

    def tail(self, n: int = 600) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace").strip()
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait, SIGKILL; then any descendants still alive, each by PID."""
        left = [p for p in tree_pids(self.pid) if p != self.pid] if self.alive() else []
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        deadline = time.monotonic() + timeout
        for pid in left:   # e.g. a forking proxy's per-connection children
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log.close()
        if self.cgroup:
            self.cgroup.remove()


def _alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def run(argv: list[str], timeout: float, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run a bounded command and capture its output (the load generators)."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
