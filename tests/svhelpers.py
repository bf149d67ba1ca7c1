"""Test machinery for the supervisor and systemd tests: processes by PID, a notify socket, a launcher
that plays systemd (LISTEN_PID/WATCHDOG_PID must name the daemon's own PID, so a wrapper sets them
and execs), tagged backends. Not part of the package."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, Server, tree_pids

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


def uid_of(pid: int) -> list[int]:
    """Real, effective, saved, fs uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise RuntimeError("no Uid line")


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


class Proc:
    """A daemon started by a test: the supervisor (a child of the test) and its workers, ended by PID."""

    def __init__(self, tmp_path: Path, config: str | None = None, args: list[str] | None = None,
                 env: dict | None = None, listen_fd: int | None = None, watchdog_self: bool = False,
                 python_code: str | None = None):
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "epollmux.conf"
        self.log_path = tmp_path / "epollmux.log"
        if config is not None:
            self.write_config(config)
        argv = (["-c", str(self.config_path)] if config is not None else []) + (args or [])
        full_env = {**os.environ, **(env or {})}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            if name not in (env or {}):
                full_env.pop(name, None)
        pass_fds = ()
        if python_code is not None:
            cmd = [sys.executable, "-c", python_code] + argv
        elif listen_fd is not None or watchdog_self:
            cmd = [sys.executable, "-c", WRAPPER] + argv
            if listen_fd is not None:
                full_env["TEST_LISTEN_FD"] = str(listen_fd)
                pass_fds = (listen_fd,)
            if watchdog_self:
                full_env["TEST_WATCHDOG_SELF"] = "1"
        else:
            cmd = [sys.executable, "-m", "epollmux"] + argv
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=full_env, pass_fds=pass_fds)
        self.seen: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write_config(self, text: str) -> None:
        self.config_path.write_text(textwrap.dedent(text))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str | re.Pattern, timeout: float = 10.0, count: int = 1,
                 detached: bool = False) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            found = len(needle.findall(text)) if isinstance(needle, re.Pattern) else text.count(needle)
            if found >= count:
                return text
            if self.proc.poll() is not None and not detached:
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

    def end(self) -> None:
        """SIGKILL the supervisor and every worker it had, by PID."""
        if self.proc.poll() is None:
            self.workers()
            self.proc.kill()
            self.proc.wait(5)
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


class NotifySocket:
    """The test's NOTIFY_SOCKET: a datagram unix socket collecting what the daemon tells systemd."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
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

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0, after: int = 0) -> int:
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
            if left <= 0:
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


class TaggedBackend(Server):
    """A backend that first sends its tag, then echoes: a client learns which backend it reached."""

    def __init__(self, tag: bytes):
        self.tag = tag
        super().__init__(self._serve)

    def _serve(self, client: socket.socket) -> None:
        try:
            client.sendall(self.tag)
            for _ in range(100_000):
                data = client.recv(65536)
                if not data:
                    return
                client.sendall(data)
        except OSError:
            return


def exchange(port: int, payload: bytes = b"ping", timeout: float = 10.0) -> bytes:
    """One connection: read the backend's tag byte, send payload, read the echo; returns tag."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        tag = s.recv(1)
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            data = s.recv(65536)
            if not data:
                break
            got += data
        if got != payload:
            raise AssertionError(f"echo {got!r} != {payload!r} (tag {tag!r})")
        return tag


def config(port: int, backend_port: int, *, listen: str | None = None, extra_global: str = "",
           workers: int = 2) -> str:
    addresses = listen or f"127.0.0.1:{port}"
    return f"""
[global]
workers = {workers}
drain_timeout = 30
{extra_global}
[listen]
  [[main]]
  address = {addresses}
[routes]
  [[all]]
  probe = any
  backend = 127.0.0.1:{backend_port}
"""


@pytest.fixture
def procs():
    """Daemons a test starts, each ended by PID afterwards."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.end()
