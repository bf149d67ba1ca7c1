"""The daemon under test: the one launcher (`Daemon`), the one config builder (`make_config`), the notify
socket that tells a test the daemon is READY, stats blocks, and /proc readings of its process tree.

`Daemon(dir).start(config, ready=True)` runs `python -m epollmux -c dir/epollmux.conf` from the repo with
NOTIFY_SOCKET pointing at a `NotifySocket` and returns once READY=1 arrives (workers accepting); the log
(stdout and stderr) goes to dir/epollmux.log. `end()` ends the supervisor and every worker seen, by PID.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from support.net import wait_port, wait_until

REPO = Path(__file__).resolve().parents[2]
_abstract_names = itertools.count()
SIGTERM = signal.SIGTERM

# Plays systemd: sets LISTEN_PID / WATCHDOG_PID to its own PID, moves the passed fd to 3, then execs.
WRAPPER = """
import os, sys
fd = int(os.environ.pop("TEST_LISTEN_FD", "-1"))
if fd >= 0:
    if fd != 3:
        os.dup2(fd, 3)
        os.close(fd)
    os.set_inheritable(3, True)
    os.environ["LISTEN_PID"] = str(os.getpid())
if os.environ.pop("TEST_WATCHDOG_SELF", ""):
    os.environ["WATCHDOG_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "epollmux"] + sys.argv[1:])
"""
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def _section(name: str, value) -> str:
    """One [[name]] subsection: a dict of options, or (listeners) an address, or (routes) a backend."""
    if isinstance(value, dict):
        body = "\n".join(f"  {k} = {v}" for k, v in value.items())
    else:
        body = f"  address = {value}"
    return f"  [[{name}]]\n{body}\n"


def make_config(listeners, routes, **global_) -> str:
    """The one config builder. listeners: a port (127.0.0.1:port), an address string, or {name: address or
    {option: value}}; routes: a backend ("host:port": one `probe = any` route) or {name: {option: value}};
    global_: the [global] options. Extra top-level sections (e.g. metrics) go in global_ as `sections=`."""
    sections = global_.pop("sections", "")
    if isinstance(listeners, int):
        listeners = f"127.0.0.1:{listeners}"
    if not isinstance(listeners, dict):
        listeners = {"main": listeners}
    if not isinstance(routes, dict):
        routes = {"all": {"probe": "any", "backend": routes}}
    glob = "".join(f"{k} = {v}\n" for k, v in global_.items())
    return ("[global]\n" + glob + "[listen]\n" + "".join(_section(n, v) for n, v in listeners.items())
            + "[routes]\n" + "".join(_section(n, v) for n, v in routes.items()) + sections)


def metrics_section(port: int, **options) -> str:
    """A [metrics] section serving on 127.0.0.1:port, for make_config(..., sections=...)."""
    return "[metrics]\n" + "".join(f"{k} = {v}\n" for k, v in {"address": f"127.0.0.1:{port}", **options}.items())


# Runs the supervisor on a loaded config without the command line's checks (Daemon.start(python_code=...)):
# what a config that reaches the daemon anyway (a NAT rule, a name that resolves differently later) does.
UNCHECKED = """
import sys, types
from epollmux import config
from epollmux.process import start
cfg = config.load_file(sys.argv[-1])
sys.exit(start.run(cfg, types.SimpleNamespace(verbose=False, listen=None, daemon=False, pidfile=None)))
"""


class NotifySocket:
    """The test's NOTIFY_SOCKET: a datagram unix socket collecting what the daemon tells systemd.
    With no path it binds an abstract address ("@..."), free of the 108-byte path limit."""

    def __init__(self, path: Path | str | None = None):
        if path is None:
            path = f"@epollmux-test-{os.getpid()}-{next(_abstract_names)}"
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.path[1:] if self.path.startswith("@") else self.path)
        self.messages: list[dict[str, str]] = []
        self.times: list[float] = []

    def _receive(self, timeout: float) -> bool:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return False
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(fields)
        self.times.append(time.monotonic())
        return True

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0, after: int = 0,
                 proc: subprocess.Popen | None = None) -> int:
        """Index of the first message at or after `after` that has key (=value); waits for it."""
        deadline = time.monotonic() + timeout
        i = after
        while True:
            while i < len(self.messages):
                m = self.messages[i]
                if key in m and (value is None or m[key] == value):
                    return i
                i += 1
            left = deadline - time.monotonic()
            if left <= 0 or (proc is not None and proc.poll() is not None and not self._receive(0.05)):
                raise AssertionError(f"no {key}={value} after #{after}; got {self.messages[after:]}")
            self._receive(min(left, 0.2))

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())

    def count(self, key: str, after: int = 0) -> int:
        return sum(1 for m in self.messages[after:] if key in m)

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """epollmux started as a real process, from the repo, with a config file; ended by PID."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp_path / "epollmux.log"
        self.config_path = tmp_path / "epollmux.conf"
        self.notify: NotifySocket | None = None
        self._own_notify = False
        self.seen: set[int] = set()

    def start(self, config: str | None = None, args: list[str] | None = None, wait: int | None = None,
              env: dict | None = None, preexec_fn=None, wrap: list[str] | None = None, ready: bool = False,
              notify: NotifySocket | None = None, listen_fd: int | None = None, watchdog_self: bool = False,
              python_code: str | None = None, timeout: float = 20.0) -> "Daemon":
        """config: the file's text; ready: return once READY=1 reaches `notify` (one of its own if None);
        wait: a port to see listening; wrap: a command that runs the daemon (e.g. setpriv with options);
        listen_fd / watchdog_self: play systemd (LISTEN_PID / WATCHDOG_PID name the daemon's own PID);
        python_code: run this instead of `-m epollmux`, with the same argv."""
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        argv = []
        if config is not None:
            self.write_config(config)
            argv = ["-c", str(self.config_path)]
        argv += args or []
        full_env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        full_env.update(env or {})
        if notify is None and ready and "NOTIFY_SOCKET" not in full_env:
            notify, self._own_notify = NotifySocket(), True
        if notify is not None:
            full_env["NOTIFY_SOCKET"] = notify.path
        self.notify = notify
        pass_fds = ()
        if python_code is not None:
            cmd = [sys.executable, "-c", python_code, *argv]
        elif listen_fd is not None or watchdog_self:
            cmd = [sys.executable, "-c", WRAPPER, *argv]
            if listen_fd is not None:
                full_env["TEST_LISTEN_FD"] = str(listen_fd)
                pass_fds = (listen_fd,)
            if watchdog_self:
                full_env["TEST_WATCHDOG_SELF"] = "1"
        else:
            cmd = [sys.executable, "-m", "epollmux", *argv]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*(wrap or []), *cmd], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=full_env, preexec_fn=preexec_fn,
                                     pass_fds=pass_fds)
        if ready:
            try:
                self.notify.wait_for("READY", "1", timeout=timeout, proc=self.proc)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nlog:\n{self.log_text()[-3000:]}") from None
        if wait is not None:
            wait_port(wait, proc=self.proc)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write_config(self, text: str) -> None:
        self.config_path.write_text(textwrap.dedent(text))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str | re.Pattern, timeout: float = 10.0, count: int = 1,
                 detached: bool = False) -> str:
        """The log once needle (a string or regex) is in it count times; fails early if the daemon exits
        (unless detached: it forked away)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            found = len(needle.findall(text)) if isinstance(needle, re.Pattern) else text.count(needle)
            if found >= count:
                return text
            if self.proc.poll() is not None and not detached:
                text = self.log_text()
                found = len(needle.findall(text)) if isinstance(needle, re.Pattern) else text.count(needle)
                if found >= count:
                    return text
                break
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} (x{count}) not in log:\n{self.log_text()[-4000:]}")

    def workers(self) -> list[int]:
        pids = [p for p in tree_pids(self.pid) if p != self.pid]
        self.seen.update(pids)
        return sorted(pids)

    def wait_workers(self, n: int, timeout: float = 10.0, exclude: set = frozenset()) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in self.workers() if p not in exclude]
            if len(pids) == n:
                return pids
            time.sleep(0.02)
        raise AssertionError(f"expected {n} workers, have {self.workers()}\n{self.log_text()[-3000:]}")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: int = SIGTERM, timeout: float = 15.0) -> int:
        """Send sig to the supervisor and wait for its exit (SIGKILL after timeout); returns its status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.workers()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close()
        return self.proc.returncode

    def end(self) -> None:
        """SIGKILL the supervisor and every worker it had, by PID."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.workers()
            self.proc.kill()
            self.proc.wait(5)
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._close()

    def _close(self) -> None:
        if not self.log.closed:
            self.log.close()
        if self._own_notify and self.notify is not None:
            self.notify.close()
            self._own_notify = False


def stats(d: Daemon, timeout: float = 10.0) -> str:
    """SIGUSR1, then the worker's stats block (one worker)."""
    before = d.log_text().count("stats:\n")
    os.kill(d.pid, signal.SIGUSR1)
    return wait_until(lambda: (c := d.log_text().split("stats:\n")) and len(c) > before + 1 and c[-1],
                      timeout, "a stats block after SIGUSR1", 0.05)


def kernel_stats(d: Daemon, timeout: float = 10.0) -> dict:
    """SIGUSR1, then the kernel relay's lines of every worker's stats block, summed: pairs, overruns,
    max_backlog, ... Waits for one line per worker (the count the last "ready: N workers" named)."""
    workers = int(re.findall(r"ready: (\d+) workers? accepting", d.wait_log("ready: "))[-1])
    lines = lambda: [x for x in d.log_text().splitlines() if x.startswith("kernel relay: ")]
    before = len(lines())
    os.kill(d.pid, signal.SIGUSR1)
    wait_until(lambda: len(lines()) >= before + workers, timeout, f"{workers} kernel relay lines", 0.05)
    total: dict = {}
    for line in lines()[before:before + workers]:
        assert line.split()[2] == "loaded", line
        for k, v in (f.split("=") for f in line.split()[3:]):
            total[k] = total.get(k, 0) + int(v)
    return total


def closed_count(block: str, route: str, reason: str) -> int:
    m = re.search(rf"^closed route={re.escape(route)} reason={re.escape(reason)} (\d+)$", block, re.M)
    return int(m.group(1)) if m else 0


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (the supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _tree_sum(pid: int, read) -> float:
    total = 0
    for p in tree_pids(pid):
        try:
            total += read(p)
        except OSError:
            pass
    return total


def tree_cpu_seconds(pid: int) -> float:
    return _tree_sum(pid, proc_cpu_seconds)


def tree_rss_kib(pid: int) -> int:
    return _tree_sum(pid, proc_rss_kib)
