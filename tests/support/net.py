"""Loopback plumbing for tests: free ports, waiting for a listener, clients, thread backends, condition waits."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


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


def each_started(make, stop=lambda x: x.stop()):
    """The body of a factory fixture (`yield from each_started(...)`): the test gets start(*args), which
    calls make(n, *args) with n counting from 0; afterwards every thing started is stopped, last first."""
    started = []

    def start(*args, **kw):
        thing = make(len(started), *args, **kw)
        started.append(thing)
        return thing

    yield start
    for thing in reversed(started):
        stop(thing)


def wait_until(condition, timeout: float = 10.0, what: str = "condition", interval: float = 0.01):
    """Poll condition() until it returns a true value (returned) or fail after timeout: the one way tests wait."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_port(port: int, timeout: float = 10.0, proc=None) -> None:
    """Wait until port listens; no test connection is made, so backends see only the test's clients."""
    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        return listening(port)
    wait_until(up, timeout, f"a listener on port {port}", 0.02)


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


def recv_upto(sock: socket.socket, n: int) -> bytes:
    """Up to n bytes; fewer when the peer ends the connection first (EOF or reset)."""
    got = b""
    try:
        while len(got) < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    return got


def read_line(sock: socket.socket) -> bytes:
    """Bytes up to and including the first newline (fewer at EOF), read one byte at a time so nothing
    after the line is taken from the socket."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def assert_echoes(sock: socket.socket, payload: bytes) -> None:
    """Send payload down an echo path and read it back whole (an EOF before that fails)."""
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(got)} of {len(payload)} echoed bytes: {got[-200:]!r}"
        got += chunk
    assert got == payload


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
            except socket.timeout:
                continue
            except OSError as exc:      # EMFILE: recorded (a client waiting on it would only see a timeout)
                if not self._stop:
                    self.errors.append(exc)
                    time.sleep(0.05)    # bounded retry rate while the test process is out of fds
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
