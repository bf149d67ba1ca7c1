"""Shared test machinery: free ports, the daemon under test (ended by PID), simple real backends."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """True if some socket listens on this TCP port (read from /proc, without connecting)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_port(port: int, timeout: float = 10.0, proc=None) -> None:
    """Wait until port listens; no test connection is made, so backends see only the test's clients."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        if listening(port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def recv_all(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    chunks, total = [], 0
    while total < limit:
        data = sock.recv(1 << 16)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


class Daemon:
    """epollmux started as a real process, from the repo, with a config file; ended by PID."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp_path / "epollmux.log"
        self.config_path = tmp_path / "epollmux.conf"

    def start(self, config: str | None = None, args: list[str] | None = None, wait: int | None = None,
              env: dict | None = None, preexec_fn=None, wrap: list[str] | None = None) -> "Daemon":
        """wrap: a command that runs the daemon (e.g. setpriv with its options)."""
        cmd = [*(wrap or []), sys.executable, "-m", "epollmux"]
        if config is not None:
            self.config_path.write_text(textwrap.dedent(config))
            cmd += ["-c", str(self.config_path)]
        cmd += args or []
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                     preexec_fn=preexec_fn)
        if wait is not None:
            wait_port(wait, proc=self.proc)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text:
                return text
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in log:\n{self.log_text()[-3000:]}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def daemon(tmp_path):
    started: list[Daemon] = []

    def make() -> Daemon:
        d = Daemon(tmp_path / f"d{len(started)}")
        d.tmp_path.mkdir()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop(signal.SIGKILL)


def stats(d: "Daemon", timeout: float = 10.0) -> str:
    """SIGUSR1, then the worker's stats block (one worker)."""
    before = d.log_text().count("stats:\n")
    os.kill(d.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while True:
        chunks = d.log_text().split("stats:\n")
        if len(chunks) > before + 1:
            return chunks[-1]
        assert time.monotonic() < deadline, "no stats after SIGUSR1"
        time.sleep(0.05)


def closed_count(block: str, route: str, reason: str) -> int:
    m = re.search(rf"^closed route={re.escape(route)} reason={re.escape(reason)} (\d+)$", block, re.M)
    return int(m.group(1)) if m else 0


def simple_config(port: int, backend: str, **global_opts) -> str:
    glob = "\n".join(f"{k} = {v}" for k, v in global_opts.items())
    return f"""
[global]
{glob}
[listen]
  [[main]]
  address = 127.0.0.1:{port}
[routes]
  [[all]]
  probe = any
  backend = {backend}
"""


class Server:
    """A backend in a thread: accepts on 127.0.0.1 and runs `handle(sock)` per client in a thread."""

    def __init__(self, handle, host: str = "127.0.0.1", backlog: int = 1024):
        self.handle = handle
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.errors: list[BaseException] = []
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            client.settimeout(60)
            threading.Thread(target=self._run, args=(client,), daemon=True).start()

    def _run(self, client) -> None:
        try:
            self.handle(client)
        except BaseException as exc:  # recorded for the test to assert on
            self.errors.append(exc)
        finally:
            client.close()

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def echo(sock: socket.socket) -> None:
    while True:
        data = sock.recv(1 << 16)
        if not data:
            sock.shutdown(socket.SHUT_WR)
            return
        sock.sendall(data)


@pytest.fixture
def server():
    servers: list[Server] = []

    def make(handle=echo, **kw) -> Server:
        s = Server(handle, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


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


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += proc_cpu_seconds(p)
        except OSError:
            pass
    return total


def tree_rss_kib(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            total += proc_rss_kib(p)
        except OSError:
            pass
    return total
