"""The supervisor's observability endpoints: Prometheus over HTTP (`[metrics] address`) and the stats unix
socket (`[metrics] stats_socket`: `show stat`, `show conns`, `show metrics`, `reload`, `help`), and `/healthz`
for load balancers (200 while the daemon accepts, 503 while it starts, drains or stops).

Owns: binding both (before the supervisor detaches; a reload binds the new ones before it drops the old),
and their clients on the supervisor's Reactor: non-blocking, one request per connection, then the answer
and close. Bounded: a request is at most MAX_REQUEST bytes; at most MAX_CLIENTS clients at once (a new one
displaces one already answered or the oldest one still sending its request, else is refused); each client
has READ_TIMEOUT to send its request and CLIENT_TIMEOUT in all; after the answer (and SHUT_WR) what it still
sends is read and dropped for LINGER_TIME, so the close sends no RST that would destroy the answer. A client
that stalls costs one fd and its answer's bytes, never the loop. What to answer comes from `answer(what, reply)`, what in ("metrics", "stat", "conns", "health",
"reload"): the
supervisor calls `reply(text)` later (it asks the workers first).
Must not know what the numbers mean (metrics.py) or how workers are asked (collector.py).
Must not import what observe/ must not (README "Architecture").
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import Callable

from epollmux import addr
from epollmux.reactor import ERR, HUP, IN, OUT

log = logging.getLogger("epollmux.exporter")

MAX_REQUEST = 8192
MAX_CLIENTS = 16
READ_TIMEOUT = 5.0
CLIENT_TIMEOUT = 15.0
LINGER_TIME = 2.0           # after the answer: read and drop what the client still sends, so close() sends no RST
LINGER_BYTES = 1 << 20
ACCEPT_BATCH = 16
RELOAD_TIMEOUT = 60.0       # a `reload` client waits this long for the new workers (READY_TIMEOUT is 20 s)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CLI_HELP = ("show stat     counts per listener and route, close reasons, workers, resources\n"
            "show conns    open connections of every worker: client, listener, route, phase, age, bytes\n"
            "show metrics  the Prometheus text format\n"
            "reload        reload the configuration file; answers `ok ...` or `refused`/`abandoned` and why\n"
            "help          this list\n")


class Endpoints:
    """What is bound: the HTTP listening socket and the unix socket (with its path), either may be None."""

    def __init__(self, http: socket.socket | None = None, unix: socket.socket | None = None, path: str = ""):
        self.http = http
        self.unix = unix
        self.path = path

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.http, self.unix) if s is not None]

    def close(self, unlink: bool = True) -> None:
        for sock in self.sockets():
            sock.close()
        if self.unix is not None and unlink:
            _unlink_socket(self.path)
        self.http = self.unix = None


def bind(address: addr.Address | None, path: str, current: Endpoints | None = None) -> Endpoints:
    """Bind what the [metrics] section asks for, reusing current's sockets where unchanged; OSError if not."""
    out = Endpoints(path=path)
    try:
        if address is not None:
            if current is not None and current.http is not None and _same_address(current.http, address):
                out.http = current.http
            else:
                out.http = _bind_http(address)
        if path:
            if current is not None and current.unix is not None and current.path == path:
                out.unix = current.unix
            else:
                out.unix = _bind_unix(path)
    except OSError:
        for sock in out.sockets():
            if current is None or sock not in current.sockets():
                sock.close()
        raise
    return out


def _same_address(sock: socket.socket, address: addr.Address) -> bool:
    try:
        return sock.getsockname()[:2] == tuple(address.sockaddr[:2])
    except OSError:
        return False


def _bind_http(address: addr.Address) -> socket.socket:
    sock = socket.socket(address.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.sockaddr)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"metrics: cannot listen on {address}: {exc.strerror}") from None
    return sock


def _bind_unix(path: str) -> socket.socket:
    """Bind the stats socket; a stale socket file (nobody answers on it) is replaced, anything else refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"stats_socket {path}: exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(path) == 0:
                raise OSError(errno.EADDRINUSE, f"stats_socket {path}: another process answers on it")
        _unlink_socket(path)
    try:
        os.mkdir(os.path.dirname(path), 0o750)    # /run/epollmux outside systemd's RuntimeDirectory=
    except FileExistsError:
        pass
    except OSError as exc:
        raise OSError(exc.errno, f"stats_socket {path}: {exc.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    old = os.umask(0o117)           # rw for owner and group only, from the first moment
    try:
        sock.bind(path)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"stats_socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    return sock


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


class Exporter:
    """Serves the bound endpoints on a reactor."""

    def __init__(self, endpoints: Endpoints | None = None):
        self.endpoints = endpoints or Endpoints()
        self.reactor = None
        self.answer: Callable[[str, Callable[[str], None]], None] | None = None
        self.clients: dict[int, _Client] = {}
        self._registered: list[int] = []

    def start(self, reactor, answer: Callable[[str, Callable[[str], None]], None]) -> None:
        self.reactor = reactor
        self.answer = answer
        self._register()

    def _register(self) -> None:
        for fd in self._registered:
            self.reactor.unregister(fd)
        self._registered = []
        for sock, kind in ((self.endpoints.http, "http"), (self.endpoints.unix, "cli")):
            if sock is not None:
                self.reactor.register(sock.fileno(), IN, _Acceptor(self, sock, kind))
                self._registered.append(sock.fileno())

    def replace(self, endpoints: Endpoints) -> None:
        """Serve `endpoints` from now on (from bind(..., current=self.endpoints)); close what they dropped."""
        old = self.endpoints
        keep = {id(s) for s in endpoints.sockets()}
        if self.reactor is not None:
            for fd in self._registered:
                self.reactor.unregister(fd)
            self._registered = []
        for sock in old.sockets():
            if id(sock) not in keep:
                sock.close()
        if old.unix is not None and id(old.unix) not in keep:
            _unlink_socket(old.path)
        self.endpoints = endpoints
        if self.reactor is not None:
            self._register()

    def describe(self) -> str:
        parts = []
        if self.endpoints.http is not None:
            host, port = self.endpoints.http.getsockname()[:2]
            parts.append(f"metrics on http://{f'[{host}]' if ':' in host else host}:{port}/metrics")
        if self.endpoints.unix is not None:
            parts.append(f"stats socket {self.endpoints.path}")
        return ", ".join(parts)

    def close(self) -> None:
        for client in list(self.clients.values()):
            client.close()
        if self.reactor is not None:
            for fd in self._registered:
                self.reactor.unregister(fd)
        self._registered = []
        self.endpoints.close()

    def close_in_child(self) -> None:
        """In a forked worker: drop the fds without touching the (shared) epoll set or the socket file."""
        for client in self.clients.values():
            client.sock.close()
        self.clients.clear()
        for sock in self.endpoints.sockets():
            sock.close()

    # --- clients -----------------------------------------------------------------------------------
    def accept(self, sock: socket.socket, kind: str) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("stats endpoint: accept failed: %s", exc.strerror)
                return
            conn.setblocking(False)
            if len(self.clients) >= MAX_CLIENTS and not self._evict():
                conn.close()        # every slot holds a client with a full request: it is being answered
                continue
            client = _Client(self, conn, kind)
            self.clients[client.fd] = client
            self.reactor.register(client.fd, IN, client)

    def _evict(self) -> bool:
        """Close a client already answered, else the oldest one that has not sent a whole request yet."""
        for state in ("lingering", "reading"):
            candidates = [c for c in self.clients.values() if c.state == state]
            if candidates:
                min(candidates, key=lambda c: c.born).close()
                return True
        return False


class _Acceptor:
    def __init__(self, exporter: Exporter, sock: socket.socket, kind: str):
        self.exporter = exporter
        self.sock = sock
        self.kind = kind

    def on_event(self, fd: int, events: int) -> None:
        self.exporter.accept(self.sock, self.kind)


class _Client:
    """One HTTP or stats-socket client: reading its request, waiting for the answer, writing it."""

    def __init__(self, exporter: Exporter, sock: socket.socket, kind: str):
        self.exporter = exporter
        self.sock = sock
        self.fd = sock.fileno()
        self.kind = kind
        self.state = "reading"
        self.inbuf = bytearray()
        self.out = memoryview(b"")
        self.head_only = False
        self.dropped = 0
        reactor = exporter.reactor
        self.born = reactor.clock()
        self.timer = reactor.call_later(READ_TIMEOUT, self._read_timeout)
        self.deadline = reactor.call_later(CLIENT_TIMEOUT, self.close)

    def on_event(self, fd: int, events: int) -> None:
        if self.state == "reading" and events & IN:
            self._read()
        elif self.state == "writing" and events & OUT:
            self._write()
        elif self.state == "lingering" and events & IN:
            self._linger()
        elif events & (ERR | HUP):
            self.close()

    def _read_timeout(self) -> None:
        if self.state == "reading":
            self.close()

    def _read(self) -> None:
        try:
            data = self.sock.recv(MAX_REQUEST + 1 - len(self.inbuf))
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.inbuf += data
        if self.kind == "http":
            end = self.inbuf.find(b"\r\n\r\n")
            end = end if end >= 0 else self.inbuf.find(b"\n\n")
            if end >= 0:
                self._http(bytes(self.inbuf[:end]))
            elif not data:
                self.close()
            elif len(self.inbuf) > MAX_REQUEST:
                self._respond_http(431, "request header fields too large\n")
        else:
            end = self.inbuf.find(b"\n")
            if end >= 0 or not data:
                self._command(bytes(self.inbuf if end < 0 else self.inbuf[:end]))
            elif len(self.inbuf) > MAX_REQUEST:
                self._send("command too long\n")

    def _http(self, head: bytes) -> None:
        parts = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._respond_http(400, "bad request\n")
            return
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            self._respond_http(405, "only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
            return
        self.head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            self._wait("metrics", lambda text: self._respond_http(200, text, CONTENT_TYPE))
        elif path == "/healthz":
            self._wait("health", lambda text: self._respond_http(200 if text.startswith("accepting") else 503, text))
        elif path == "/":
            self._respond_http(200, "epollmux: metrics at /metrics\n")
        else:
            self._respond_http(404, "not found; metrics are at /metrics\n")

    def _command(self, line: bytes) -> None:
        words = line.decode(errors="replace").split()
        if words in (["show", "stat"], ["show", "stats"]):
            self._wait("stat", self._send)
        elif words == ["show", "conns"]:
            self._wait("conns", self._send)
        elif words == ["show", "metrics"]:
            self._wait("metrics", self._send)
        elif words == ["reload"]:
            self.deadline.cancel()
            self.deadline = self.exporter.reactor.call_later(RELOAD_TIMEOUT, self.close)
            self._wait("reload", self._send)
        elif words in (["help"], []):
            self._send(CLI_HELP)
        else:
            self._send("unknown command; try:\n" + CLI_HELP)

    def _wait(self, what: str, then: Callable[[str], None]) -> None:
        """Ask the supervisor; stop reading meanwhile (only an error or a hang-up is reported)."""
        self.state = "waiting"
        self.exporter.reactor.modify(self.fd, 0)
        self.exporter.answer(what, lambda text: self.state == "waiting" and then(text))

    def _respond_http(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8",
                      extra: str = "") -> None:
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   431: "Request Header Fields Too Large", 503: "Service Unavailable"}
        payload = body.encode()
        head = (f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n{extra}\r\n").encode()
        self._start_writing(head if self.head_only else head + payload)

    def _send(self, text: str) -> None:
        self._start_writing(text.encode())

    def _start_writing(self, data: bytes) -> None:
        if self.state == "closed":
            return
        self.state = "writing"
        self.out = memoryview(data)
        self.exporter.reactor.modify(self.fd, OUT)
        self._write()

    def _write(self) -> None:
        try:
            while self.out:
                n = self.sock.send(self.out)
                self.out = self.out[n:]
            self.sock.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.state = "lingering"       # the client reads the answer, sees EOF and closes; then so do we
        self.dropped = 0
        self.timer.cancel()
        self.timer = self.exporter.reactor.call_later(LINGER_TIME, self.close)
        self.exporter.reactor.modify(self.fd, IN)

    def _linger(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.dropped += len(data)
        if not data or self.dropped > LINGER_BYTES:
            self.close()

    def close(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.timer.cancel()
        self.deadline.cancel()
        self.exporter.clients.pop(self.fd, None)
        self.exporter.reactor.unregister(self.fd)
        self.out = memoryview(b"")
        self.sock.close()
