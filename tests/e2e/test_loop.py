"""A backend that is the daemon itself: refused on reload, and caught at run time when it slips through."""

from __future__ import annotations

import re
import signal
import socket

from support.daemon import UNCHECKED, closed_count, make_config, stats
from support.net import free_port



def test_a_route_to_its_own_listener_costs_one_extra_connection(daemon):
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{port}", workers=1), python_code=UNCHECKED, wait=port)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
        client.sendall(b"hello")
        try:
            while client.recv(4096):
                pass
        except ConnectionResetError:
            pass
    block = stats(d)
    accepted = int(re.search(r"^accepted=(\d+)", block, re.M).group(1))
    assert accepted <= 3, f"one client became {accepted} connections"
    assert closed_count(block, "-", "loop") == 1
    d.wait_log("a route's backend leads back to a listener of this daemon")


def test_reload_refuses_a_backend_that_is_the_daemon(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", workers=1), ready=True)
    d.write_config(make_config(port, f"127.0.0.1:{port}", workers=1))
    d.signal(signal.SIGHUP)
    text = d.wait_log("reload refused (")
    assert f"[routes.all] backend: '127.0.0.1:{port}' is the daemon's own listener [listen.main]" in text
    assert "generation 2" not in text
