"""The stress suite (`make stress`), the run-time loop guard when backend sockets share local ports: in a
network namespace whose ephemeral range holds 128 ports, the kernel gives one local port to connects towards
different addresses at once, so a worker's looping backend socket (a route whose backend is the daemon
itself) shares its local address with backend sockets of an ordinary route. Every looping client must cost
exactly one extra connection (closed as `loop`), and no ordinary client may be closed as one. The test
process's main thread enters the namespace (setns) for the test and leaves it after; the daemon, backend and
clients are all made inside it."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import socket
import subprocess
import threading

import pytest

from stress.harness import CLIENT_TIMEOUT, Clock, healthy, n, one_line, read_until_eof, recv_exact, run_clients
from support.daemon import UNCHECKED, closed_count, make_config, stats
from support.net import connect

pytestmark = pytest.mark.timeout(900)

CLONE_NEWNET = 0x40000000
PORT_RANGE = "40000 40127"
PORT = 4443               # outside the range: the listener never takes an ephemeral port


@contextlib.contextmanager
def inside_new_netns():
    """This thread (and the threads and processes it starts) in a fresh namespace with loopback up and a
    narrow ephemeral port range; back in the original one afterwards, and the namespace deleted."""
    if os.geteuid() != 0:
        pytest.fail("the namespace tests need root (CI runs as root)")
    name = f"emx-loop{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        for argv in (["ip", "-n", name, "link", "set", "lo", "up"],
                     ["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv4.ip_local_port_range={PORT_RANGE}"]):
            subprocess.run(argv, check=True, capture_output=True, timeout=10)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                pytest.fail(f"setns: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)
        try:
            yield name
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace")
    finally:
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def answer_once(sock: socket.socket) -> None:
    """The ordinary route's backend: its tag and the client's 36 bytes back, then it closes first."""
    sock.sendall(b"E" + recv_exact(sock, 36))


def test_loops_are_caught_while_backend_sockets_share_local_ports(daemon, server):
    with inside_new_netns():
        backend = server(answer_once, backlog=4096)
        config = make_config(PORT, {"loop": {"probe": "regex", "regex": "^LOOP", "backend": f"127.0.0.1:{PORT}"},
                                    "echo": {"probe": "any", "backend": f"127.0.0.1:{backend.port}"}},
                             workers=1, probe_timeout=30)
        d = daemon().start(config, python_code=UNCHECKED, wait=PORT)
        worker = d.wait_workers(1)
        clients, every = n(4000), 8
        counts = {"echoed": 0, "loop_closed": 0, "busy": 0}

        def client(i: int) -> str:
            looping = i % every == 0
            payload = (b"LOOP" if looping else b"ECHO") + os.urandom(32)
            try:
                c = connect(PORT, timeout=CLIENT_TIMEOUT)
            except OSError as exc:           # the narrow range is full of TIME_WAIT: not the daemon's doing
                assert exc.errno == errno.EADDRNOTAVAIL, exc
                return "busy"
            with c:          # never the first to close: a TIME_WAIT would hold one of the few ports
                c.sendall(payload)
                got, _ = read_until_eof(c)
            if looping:
                assert not got.startswith(b"E"), "a looping client reached the echo route"
                return "loop_closed"
            assert got == b"E" + payload, f"an ordinary client got {got[:80]!r} (closed as a loop?)"
            return "echoed"

        clock = Clock()
        for outcome in run_clients(client, range(clients), workers=48):
            counts[outcome] += 1
        seconds = clock()
        block = stats(d)
        accepted = int(re.search(r"^accepted=(\d+)", block, re.M).group(1))
        loops = closed_count(block, "-", "loop")
        connected = clients - counts["busy"]
        # each looping client costs exactly one extra connection, closed as loop; nobody else is one
        assert loops == counts["loop_closed"], (loops, counts, block)
        assert accepted == connected + loops, (accepted, connected, loops, block)
        assert counts["busy"] <= clients // 100, counts
        one_line("loop-collisions", clients=clients, loops_closed=loops, accepted=accepted,
                 seconds=seconds, **counts, health=healthy(d, worker))
