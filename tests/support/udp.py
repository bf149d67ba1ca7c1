"""UDP helpers for the tests: a free UDP port, an echo backend in a thread that tags its replies, and a
client that sends one datagram and waits for the answer."""

from __future__ import annotations

import socket
import threading


def free_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_both(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP (a test serving both on one port number)."""
    for _ in range(100):
        port = free_udp_port(host)
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free for both TCP and UDP")


def low_udp_port() -> int:
    """A UDP port below 1024 free on 127.0.0.1 (skips the test when none is)."""
    import pytest
    for port in range(980, 600, -7):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    pytest.skip("no free UDP port below 1024")


class UdpEcho:
    """Answers each datagram with tag + the datagram, to its sender; counts datagrams per sender."""

    def __init__(self, tag: bytes = b"", host: str = "127.0.0.1"):
        self.tag = tag
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):   # a burst must not overflow it
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
                break
            except OSError:
                continue
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.address = f"udp:{host}:{self.port}" if ":" not in host else f"udp:[{host}]:{self.port}"
        self.senders: dict = {}
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, sender = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.senders[sender] = self.senders.get(sender, 0) + 1
            try:
                self.sock.sendto(self.tag + data, sender)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


class UdpClient:
    """One client flow: a socket bound to an ephemeral port, connected to the daemon's UDP address."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))

    def ask(self, data: bytes) -> bytes:
        self.sock.send(data)
        return self.sock.recv(65535)

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self) -> bytes:
        return self.sock.recv(65535)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()
