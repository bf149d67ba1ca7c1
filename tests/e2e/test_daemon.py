"""The daemon as a whole: connect timeout, fd exhaustion, real tools through it."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import time

from support.net import connect, free_port, recv_all
from support.daemon import make_config, tree_cpu_seconds
from support.peers import need


def _full_backlog_server():
    """A listener whose accept queue is full: further SYNs are dropped, so connects hang."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(srv.getsockname())
        fillers.append(s)
    time.sleep(0.2)
    return srv, fillers


def test_connect_timeout_fires_and_others_are_served(daemon, server):
    srv, fillers = _full_backlog_server()
    good = server()
    port, other = free_port(), free_port()
    cfg = f"""
    [global]
    connect_timeout = 0.5
    [listen]
      [[hung]]
      address = 127.0.0.1:{port}
      routes = hung
      [[ok]]
      address = 127.0.0.1:{other}
      routes = ok
    [routes]
      [[hung]]
      probe = any
      backend = 127.0.0.1:{srv.getsockname()[1]}
      [[ok]]
      probe = any
      backend = 127.0.0.1:{good.port}
    """
    d = daemon().start(cfg, wait=port)
    started = time.monotonic()
    c = connect(port)
    ok = connect(other)                    # served while the first one waits for its backend
    ok.sendall(b"ping")
    assert ok.recv(4) == b"ping"
    assert recv_all(c) == b""
    waited = time.monotonic() - started
    assert 0.4 < waited < 5, waited
    d.wait_log("reason=backend-timeout")
    for s in fillers + [srv, c, ok]:
        s.close()



def test_late_connect_is_relayed_once_the_backend_takes_it(daemon):
    """A connect still in SYN_SENT when connect() returns (its SYN dropped by a full accept queue) waits
    for its writable edge and then relays; the bytes the client sent meanwhile reach the backend."""
    srv, fillers = _full_backlog_server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{srv.getsockname()[1]}"), wait=port)
    c = connect(port)
    c.sendall(b"ping")
    time.sleep(0.3)                        # the daemon's SYN is being dropped now
    for s in fillers:
        s.close()
    srv.settimeout(5)
    answered = False
    for _ in range(8):                     # drain the queue: fillers first, then the retransmitted SYN
        peer, _ = srv.accept()
        peer.settimeout(3)
        try:
            data = peer.recv(4)
        except OSError:
            data = b""
        if data == b"ping":
            peer.sendall(b"pong")
            peer.close()
            answered = True
            break
        peer.close()
    assert answered
    assert c.recv(4) == b"pong"
    assert recv_all(c) == b""
    c.close()
    srv.close()
    assert "reason=backend" not in d.log_text()


def _low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))


def test_fd_exhaustion_neither_crashes_nor_spins(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", workers=1), wait=port,
                       preexec_fn=_low_fd_limit)
    flood = []
    for _ in range(120):                   # far past what 48 fds can hold
        s = socket.socket()
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        flood.append(s)
    time.sleep(0.5)
    cpu0 = tree_cpu_seconds(d.pid)
    time.sleep(2.0)
    spent = tree_cpu_seconds(d.pid) - cpu0
    assert d.proc.poll() is None, "daemon died"
    assert spent < 0.3, f"daemon burnt {spent:.2f} CPU-s in 2 s while out of fds"
    assert "refusing new clients" in d.log_text()
    for s in flood:
        s.close()
    time.sleep(1.5)                        # paused acceptors re-arm
    deadline = time.monotonic() + 10
    while True:
        c = connect(port)
        try:
            c.sendall(b"again")
            if c.recv(5) == b"again":
                break
        except OSError:
            pass
        finally:
            c.close()
        assert time.monotonic() < deadline, "daemon does not serve again"
        time.sleep(0.2)


def test_iperf3_through_epollmux(daemon, iperf3_server):
    port = free_port()
    daemon().start(make_config(port, f"127.0.0.1:{iperf3_server}", log_level="warning"), wait=port)
    r = subprocess.run([need("iperf3"), "-c", "127.0.0.1", "-p", str(port), "-t", "1", "-P", "2", "-J"],
                       capture_output=True, text=True, timeout=60)
    result = json.loads(r.stdout)
    assert "error" not in result, result.get("error")
    assert result["end"]["sum_received"]["bytes"] > 10_000_000


def test_curl_through_epollmux_to_nginx(daemon, nginx, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    body = bytes(range(256)) * 4096
    (www / "blob.bin").write_bytes(body)
    web = free_port()
    nginx(f"server {{ listen 127.0.0.1:{web}; root {www}; }}", [web])
    port = free_port()
    daemon().start(make_config(port, f"127.0.0.1:{web}"), wait=port)
    out = tmp_path / "got.bin"
    r = subprocess.run([need("curl"), "-sS", "-o", str(out), "-w", "%{http_code}",
                        f"http://127.0.0.1:{port}/blob.bin"], capture_output=True, text=True, timeout=30)
    assert r.stdout == "200", r.stderr
    assert out.read_bytes() == body
