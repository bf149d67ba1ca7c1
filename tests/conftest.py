"""Puts tests/ on sys.path (so tests import `support.*`) and registers the shared fixtures: `daemon` (the
one launcher), `server` (thread backends), `notify` (a NOTIFY_SOCKET), one fixture per real peer and the
test CA. Placement of tests: tests/README.md."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The test process holds both ends' sockets of the tests with many connections (500 clients + 500 thread
# backends' sockets): a soft open-files limit of 1024 (Debian's and newer container runtimes' default) leaves
# a few fds of headroom, and a backend that cannot accept makes a client wait. Raise it as the daemon does.
FD_HEADROOM = 65536
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft != resource.RLIM_INFINITY and _soft < FD_HEADROOM:
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (FD_HEADROOM if _hard == resource.RLIM_INFINITY else min(FD_HEADROOM, _hard), _hard))

from support.certs import make_ca_factory, tls_ca  # noqa: E402,F401  (fixtures)
from support.daemon import Daemon, NotifySocket  # noqa: E402
from support.net import Server, each_started, echo  # noqa: E402
from support.peers import h3server, haproxy, iperf3_server, nginx, openvpn, sshd  # noqa: E402,F401  (fixtures)


@pytest.fixture
def daemon(tmp_path):
    """daemon() -> a new Daemon in its own directory; every one started is ended by PID afterwards."""
    yield from each_started(lambda n: Daemon(tmp_path / f"d{n}"), Daemon.end)


@pytest.fixture
def notify(tmp_path):
    """The NOTIFY_SOCKET a test passes to Daemon.start(notify=...) to read READY/RELOADING/STATUS."""
    n = NotifySocket()
    yield n
    n.close()


@pytest.fixture
def server():
    """server(handle=echo) -> a thread backend on 127.0.0.1; all closed afterwards."""
    yield from each_started(lambda n, handle=echo, **kw: Server(handle, **kw), Server.close)
