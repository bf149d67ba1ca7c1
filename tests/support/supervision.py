"""Test machinery for the supervisor and systemd tests: tagged backends (a client learns which backend it
reached), one exchange through the daemon, /proc status fields, the usual config. Not part of the package."""

from __future__ import annotations

import socket
from pathlib import Path

from support.daemon import make_config
from support.net import Server


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


def config(port: int, backend_port: int, *, listen: str | None = None, workers: int = 2, **global_) -> str:
    """The supervisor tests' usual config: one `any` route to backend_port, two workers, 30 s drain."""
    return make_config(listen or port, f"127.0.0.1:{backend_port}", workers=workers, drain_timeout=30, **global_)
