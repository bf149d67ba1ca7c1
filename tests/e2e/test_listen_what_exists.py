"""A listener address that does not exist on the host is left out with a warning; start fails (exit 2)
only when nothing could be bound; a reload that adds an address says so."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys

import pytest

from support.daemon import REPO, make_config
from support.net import connect, free_port, recv_all, wait_until

ABSENT6 = "[2001:db8::99]"      # documentation prefix: on no interface of a test host


def test_listens_on_what_exists_and_warns_for_the_rest(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(make_config(f"127.0.0.1:{port}, {ABSENT6}:{port}", f"127.0.0.1:{backend.port}"),
                       ready=True)
    text = d.wait_log("not an address of this host, left out")
    assert f"cannot listen on {ABSENT6}:{port}: Cannot assign requested address (listener main)" in text
    with connect(port) as c:
        c.sendall(b"ping")
        c.shutdown(1)
        assert recv_all(c) == b"ping"


def test_fails_only_when_nothing_could_be_bound(daemon):
    d = daemon().start(make_config(f"{ABSENT6}:{free_port()}", "127.0.0.1:9"))
    assert d.wait() == 2
    assert "nothing to listen on" in d.log_text()


def test_reload_that_adds_an_address_says_so(daemon, server):
    backend = server()
    port, extra = free_port(), free_port()
    d = daemon().start(make_config(f"127.0.0.1:{port}", f"127.0.0.1:{backend.port}"), ready=True)
    d.write_config(make_config(f"127.0.0.1:{port}, 127.0.0.1:{extra}", f"127.0.0.1:{backend.port}"))
    d.signal(signal.SIGHUP)
    text = d.wait_log("now also listening on")
    assert f"now also listening on 127.0.0.1:{extra} (main)" in text
    assert f"127.0.0.1:{port} (main)" not in text.split("now also listening on")[1].splitlines()[0]


CLIENT = """
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
c.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
try:
    c.recv(100)
except OSError:
    pass
"""


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None, reason="needs util-linux")
def test_the_example_runs_on_a_host_without_ipv6_loopback(daemon, tmp_path):
    """The shipped example, in a network namespace whose loopback has no ::1."""
    port = free_port()
    example = (REPO / "etc" / "epollmux.conf").read_text().replace("4443", str(port))
    example = re.sub(r"(?m)^\s*(user|group)\s*=.*$", "", example)       # this test host has no such user
    example = example.replace("workers = auto", "workers = 1")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    if probe.returncode:
        pytest.skip(f"cannot make a network namespace: {probe.stderr.decode().strip()}")
    setup = "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 && ip link set lo up && exec \"$@\""
    d = daemon().start(example, wrap=["unshare", "-n", "sh", "-c", setup, "sh"])
    text = d.wait_log("ready:", timeout=20)
    assert f"cannot listen on [::1]:{port}" in text
    subprocess.run(["nsenter", f"--net=/proc/{d.pid}/ns/net", sys.executable, "-c", CLIENT, str(port)],
                   check=True, timeout=30)
    wait_until(lambda: "route=http" in d.log_text(), what="the client's access log line")
