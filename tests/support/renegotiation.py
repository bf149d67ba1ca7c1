"""TLS 1.2 client-initiated renegotiation, the real thing: `openssl s_client -tls1_2` given `R` on stdin
(Python's ssl cannot renegotiate), and a TLS 1.2 stream that runs beside it through the same worker."""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import subprocess
import tempfile
import threading

from support.net import connect

NAME = "reneg.example"


def renegotiate(port: int, ca, timeout: float = 30.0) -> str:
    """One s_client: handshake (TLS 1.2), then `R` on stdin, which stays open (s_client quits at its end,
    and with -ign_eof it takes no commands) until the daemon ends the connection; what it printed."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(["openssl", "s_client", "-tls1_2", "-connect", f"127.0.0.1:{port}", "-servername",
                                 NAME, "-CAfile", str(ca)], stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            proc.stdin.write(b"R\n")
            proc.stdin.flush()
            proc.wait(timeout)           # stdin still open: only the daemon's close ends it
        except (subprocess.TimeoutExpired, BrokenPipeError):
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
        out.seek(0)
        return out.read().decode(errors="replace")


class Stream(threading.Thread):
    """A TLS 1.2 client echoing random chunks through the daemon until stop() (at least `least` chunks,
    at most `most`): `sent` and `received` digests, `chunks` and `bytes` once joined, `error` if it failed."""

    def __init__(self, port: int, ca, least: int = 20, most: int = 200_000, timeout: float = 20.0):
        super().__init__(daemon=True)
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.tls = ctx.wrap_socket(connect(port, timeout=timeout), server_hostname=NAME)
        self.least, self.most = least, most
        self.sent, self.received = hashlib.sha256(), hashlib.sha256()
        self.chunks = self.bytes = 0
        self.error: BaseException | None = None
        self._stop_asked = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        try:
            while self.chunks < self.most and (self.chunks < self.least or not self._stop_asked.is_set()):
                data = rng.randbytes(rng.randint(1, 65536))
                self.tls.sendall(data)
                self.sent.update(data)
                got = 0
                while got < len(data):
                    chunk = self.tls.recv(len(data) - got)
                    if not chunk:
                        raise ConnectionError(f"stream ended after {self.bytes + got} bytes")
                    self.received.update(chunk)
                    got += len(chunk)
                self.chunks += 1
                self.bytes += len(data)
        except BaseException as exc:     # reported by the test
            self.error = exc
        finally:
            self.tls.close()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop_asked.set()
        self.join(timeout)
        assert not self.is_alive(), "the stream did not finish"
        assert self.error is None, repr(self.error)
        assert self.sent.digest() == self.received.digest()


def echo_tls12(sock: socket.socket) -> None:
    """A plain backend for the stream: echo until EOF."""
    while data := sock.recv(65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)

