"""`promtool check metrics` finds nothing to complain about in what the metrics listener serves after some
traffic (a routed connection whose backend refuses), and /healthz sits beside /metrics."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest

from support.daemon import make_config
from support.net import connect, free_port, wait_port

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)")]


def test_promtool_check_metrics_is_clean(daemon):
    port, metrics = free_port(), free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{free_port()}", workers=1,
                                   sections=f"[metrics]\naddress = 127.0.0.1:{metrics}\n"), ready=True)
    wait_port(metrics)
    with connect(port) as client:
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:  # the refused backend ends the client with a FIN or a reset; either is fine here
            client.recv(1)
        except ConnectionResetError:
            pass
    d.wait_log("reason=backend-refused")
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read()
    assert b"epollmux_connections_accepted_total" in body
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr
    assert urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=10).status == 200
