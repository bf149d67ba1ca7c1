"""Transparent mode across two network namespaces, with the routing recipe of the README.

The loopback tests (test_proxy_e2e.py) show that the backend connection is bound to the client's address.
They cannot show that the recipe for routing the backend's replies back works: on loopback every 127.0.0.x
address is local anyway. Here the client lives in a namespace of its own (10.77.0.2, fd77::2) behind a veth
pair; epollmux and the backend share the other one (10.77.0.1, fd77::1). The backend's replies to 10.77.0.2
would leave by the veth unless the policy rule sends them to the local table, where the transparent socket
picks them up. Without the rule the backend's SYN-ACK reaches the client namespace, which has no such
connection, so the backend connect fails: the second test pins that down, so the first one proves the rule.

Everything runs in namespaces made here and deleted at the end: `ip netns exec` execs its command, so each
process is ended by its own PID.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from test_proxy_e2e import conn_line, fields  # noqa: F401

BACKEND = textwrap.dedent("""
    import socket, sys
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(16)
    print("listening", flush=True)
    while True:
        c, peer = s.accept()
        print("peer", peer[0], peer[1], flush=True)
        data = c.recv(1024)
        c.sendall(data)
        c.close()
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
    c = socket.create_connection((host, port), timeout=5)
    c.sendall(payload)
    got = b""
    while True:
        try:
            chunk = c.recv(1024)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    print("local", c.getsockname()[0], c.getsockname()[1])
    print("got", got.decode() or "-")
""")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns():
    """Two namespaces joined by a veth pair: {'client': name, 'server': name}."""
    if os.geteuid() != 0:
        pytest.fail("the namespace tests need root (CI runs as root)")
    tag = f"{os.getpid() % 100000}"
    names = {"client": f"emx-c{tag}", "server": f"emx-s{tag}"}
    made = []
    try:
        for name in names.values():
            ip("netns", "add", name)
            made.append(name)
        c, s = names["client"], names["server"]
        ip("-n", c, "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", s)
        ip("-n", c, "addr", "add", "10.77.0.2/24", "dev", "vc")
        ip("-n", s, "addr", "add", "10.77.0.1/24", "dev", "vs")
        ip("-n", c, "-6", "addr", "add", "fd77::2/64", "dev", "vc", "nodad")
        ip("-n", s, "-6", "addr", "add", "fd77::1/64", "dev", "vs", "nodad")
        for ns, dev in ((c, "vc"), (s, "vs")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def route_replies(ns: str, *ports: int) -> None:
    """The README's recipe, with a port match in the rule itself (no iptables needed): the backends'
    replies (source port in `ports`) are looked up in table 100, which makes every address local."""
    for fam, anyaddr in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        for port in ports:
            ip("-n", ns, fam, "rule", "add", "ipproto", "tcp", "sport", str(port), "lookup", "100")
        ip("-n", ns, fam, "route", "add", "local", anyaddr, "dev", "lo", "table", "100")


class InNs:
    """A process in a namespace, its output in a file; ended by its PID."""

    def __init__(self, ns: str, argv: list[str], out: Path):
        self.out = out
        self.log = open(out, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_text(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out.read_text(errors="replace")
            if needle in text:
                return text
            assert self.proc.poll() is None, text
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in {self.out}:\n{self.out.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def run_client(ns: str, host: str, port: int, payload: str) -> dict[str, list[str]]:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, host, str(port), payload],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()}


CONFIG = """
[global]
workers = 1
log_level = info
connect_timeout = 2
[listen]
  [[main]]
  address = 10.77.0.1:{port}, [fd77::1]:{port}
  routes = v4, v6
[routes]
  [[v4]]
  probe = regex
  regex = ^four
  transparent = yes
  backend = 10.77.0.1:{b4}
  [[v6]]
  probe = any
  transparent = yes
  backend = [fd77::1]:{b6}
"""


def start_all(netns, tmp_path: Path, daemon, port: int, b4: int, b6: int):
    s = netns["server"]
    backends = [InNs(s, [sys.executable, "-c", BACKEND, host, str(bport)], tmp_path / f"backend{bport}.out")
                for host, bport in (("10.77.0.1", b4), ("fd77::1", b6))]
    for b in backends:
        b.wait_text("listening")
    d = daemon().start(CONFIG.format(port=port, b4=b4, b6=b6), wrap=["ip", "netns", "exec", s])
    d.wait_log("ready: 1 worker accepting")
    return d, backends


@pytest.mark.timeout(60)
def test_backend_sees_the_remote_client_address_with_the_readme_routing(netns, tmp_path, daemon):
    port, b4, b6 = 4443, 2201, 2202
    route_replies(netns["server"], b4, b6)
    d, (back4, back6) = start_all(netns, tmp_path, daemon, port, b4, b6)
    try:
        got = run_client(netns["client"], "10.77.0.1", port, "four score")
        assert got["got"] == ["four", "score"], got
        peer = back4.wait_text("peer ").split("peer ")[1].split()
        assert peer[0] == "10.77.0.2", peer                  # the client's own address, not 10.77.0.1
        assert int(peer[1]) != int(got["local"][1])         # from a port of the daemon's own
        got6 = run_client(netns["client"], "fd77::1", port, "six")
        assert got6["got"] == ["six"], got6
        assert back6.wait_text("peer ").split("peer ")[1].split()[0] == "fd77::2"
        line = conn_line(d, f"10.77.0.2:{got['local'][1]}")
        assert line["route"] == "v4" and line["reason"] == "eof", line
    finally:
        for b in (back4, back6):
            b.stop()


@pytest.mark.timeout(60)
def test_without_the_routing_rule_the_backend_connect_fails_cleanly(netns, tmp_path, daemon):
    port, b4, b6 = 4444, 2203, 2204
    d, backends = start_all(netns, tmp_path, daemon, port, b4, b6)
    try:
        got = run_client(netns["client"], "10.77.0.1", port, "four")
        assert got["got"] == ["-"], got                      # closed, nothing relayed
        line = conn_line(d, f"10.77.0.2:{got['local'][1]}")
        assert line["route"] == "v4" and line["reason"] == "backend-timeout", line
        assert "peer " not in backends[0].out.read_text()    # the handshake never completed
        assert d.proc.poll() is None
    finally:
        for b in backends:
            b.stop()
