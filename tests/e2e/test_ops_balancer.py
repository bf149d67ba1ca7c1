"""The README's two-host set-up, on loopback: HAProxy in front of two epollmux daemons, PROXY v2 to keep
the client's address, `option httpchk GET /healthz`. A stop with `stop_delay` takes a daemon out of the
balancer before it stops accepting: no client connection fails while it leaves, the other daemon takes
every new one, and the access log names the client's own address (127.0.0.2), not HAProxy's."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from support.daemon import make_config, metrics_section
from support.net import free_port, wait_port, wait_until
from support.peers import Process, need
from support.supervision import TaggedBackend

pytestmark = pytest.mark.timeout(120)

STOP_DELAY = 5.0        # 25 health-check intervals: the balancer sees 503 long before the workers stop accepting


def epollmux_config(port: int, metrics: int, backend: int) -> str:
    return make_config({"public": {"address": f"127.0.0.1:{port}", "proxy_protocol": "v2", "trusted": "127.0.0.1/32"}},
                       f"127.0.0.1:{backend}", workers=1, stop_delay=STOP_DELAY, drain_timeout=30,
                       sections=metrics_section(metrics))


def through(port: int) -> bytes:
    """One client from 127.0.0.2 through the balancer: the tag of the backend it reached, b"" if it failed."""
    try:
        with socket.socket() as sock:
            sock.settimeout(10)
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", port))
            return sock.recv(1)
    except OSError:
        return b""


def test_two_daemons_behind_haproxy_stop_without_a_failed_connection(tmp_path, daemon):
    backends = {b"A": TaggedBackend(b"A"), b"B": TaggedBackend(b"B")}
    haproxy = None
    try:
        daemons = {}
        servers = []
        for tag, backend in backends.items():
            port, metrics = free_port(), free_port()
            daemons[tag] = daemon().start(epollmux_config(port, metrics, backend.port), ready=True)
            wait_port(metrics)
            servers.append(f"  server mux{tag.decode()} 127.0.0.1:{port} send-proxy-v2 check port {metrics} "
                           "inter 200ms fall 1 rise 1\n")
        front = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text("global\n  nbthread 1\n  maxconn 256\n"
                       "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n"
                       f"frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\n"
                       "backend b\n  balance roundrobin\n  option httpchk GET /healthz\n" + "".join(servers))
        haproxy = Process([need("haproxy"), "-db", "-f", str(cfg)], tmp_path / "haproxy.log")
        wait_port(front, proc=haproxy.proc)
        seen: set[bytes] = set()
        wait_until(lambda: seen.update([through(front)]) or {b"A", b"B"} <= seen, timeout=30,
                   what="both daemons serving through HAProxy")

        leaving = daemons[b"A"]
        leaving.signal(signal.SIGTERM)
        tags, started = [], time.monotonic()
        while leaving.proc.poll() is None and time.monotonic() - started < 60:
            tags.append(through(front))
            time.sleep(0.005)      # pacing only: the loop ends on A's exit, not on time
        assert leaving.wait(30) == 0, leaving.log_text()[-3000:]
        assert b"" not in tags, f"{tags.count(b'')} of {len(tags)} connections failed while A was leaving"
        assert tags[-20:] == [b"B"] * 20, tags[-40:]       # the balancer took A out before it stopped accepting
        assert "stopping in 5s (stop_delay)" in leaving.log_text()
        daemons[b"B"].wait_log("client=127.0.0.2:")
    finally:
        if haproxy is not None:
            haproxy.stop()
        for backend in backends.values():
            backend.close()
