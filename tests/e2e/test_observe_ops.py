"""Observability as an administrator reads it: show stat's per-worker counts, the outer route of a route
chosen inside TLS, zero series, the standard process_* metrics (promtool-clean), one time zone, plurals."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

import pytest

from support.daemon import REPO, make_config, tree_pids
from support.net import connect, free_port, recv_all, wait_until
from epollmux.tools import control


def get(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read().decode()


def ask(path: str, command: str) -> str:
    return control.ask(path, command, timeout=10)


def sample(text: str, name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_show_stat_per_worker_accepted_matches_the_listener(daemon, server, tmp_path):
    backend = server()
    port = free_port()
    sock = tmp_path / "stats.sock"
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", workers=1,
                                   sections=f"[metrics]\nstats_socket = {sock}\n"), ready=True)
    for _ in range(3):
        with connect(port) as c:
            c.sendall(b"x")
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b"x"
    text = ask(str(sock), "show stat")      # asked at once: within the workers' 1 s count report
    assert re.search(r"^worker \d+: generation 1, ready, accepted 3,", text, re.M), text


def test_process_metrics_zero_series_and_promtool(daemon, server):
    backend = server()
    port, mport = free_port(), free_port()
    routes = {"used": {"probe": "any", "backend": f"127.0.0.1:{backend.port}"},
              "idle": {"probe": "ssh", "backend": "127.0.0.1:9"}}
    cfg = make_config({"main": {"address": f"127.0.0.1:{port}", "routes": "idle, used"}}, routes, workers=2,
                      sections=f"[metrics]\naddress = 127.0.0.1:{mport}\n")
    d = daemon().start(cfg, ready=True)
    text = get(mport)
    assert sample(text, "epollmux_connections_routed_total", '{route="idle"}') == 0
    assert sample(text, "epollmux_connections_routed_total", '{route="used"}') == 0
    assert sample(text, "epollmux_bytes_total", '{route="idle",direction="up"}') == 0
    assert sample(text, "epollmux_connections_accepted_total", '{listener="main"}') == 0
    pids = tree_pids(d.pid)
    assert len(pids) == 3
    fds = sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids)
    assert abs(sample(text, "process_open_fds") - fds) <= 6
    assert sample(text, "process_resident_memory_bytes") > 10 << 20
    assert sample(text, "process_cpu_seconds_total") > 0
    assert sample(text, "process_max_fds") >= 1024
    start = sample(text, "process_start_time_seconds")
    assert abs(start - time.time()) < 120
    if shutil.which("promtool") is None:
        pytest.skip("promtool missing (Debian package prometheus)")
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def test_outer_route_of_ssh_inside_tls_is_closed_too(daemon, server, tls_ca):
    backend = server()
    leaf = tls_ca.issue("ssh.example")
    port, mport = free_port(), free_port()
    routes = {"tunnel": {"probe": "tls", "tls_cert": leaf.chain, "tls_key": leaf.key, "inner_routes": "inner"},
              "inner": {"probe": "ssh", "backend": f"127.0.0.1:{backend.port}"}}
    cfg = make_config({"main": {"address": f"127.0.0.1:{port}", "routes": "tunnel"}}, routes, workers=1,
                      sections=f"[metrics]\naddress = 127.0.0.1:{mport}\n")
    d = daemon().start(cfg, ready=True)
    ctx = ssl.create_default_context(cafile=str(tls_ca.cert))
    with ctx.wrap_socket(connect(port), server_hostname="ssh.example") as c:
        c.sendall(b"SSH-2.0-test\r\n")
        assert c.recv(100) == b"SSH-2.0-test\r\n"
    wait_until(lambda: "route=tunnel>inner" in d.log_text(), what="the access line")
    text = get(mport)
    assert sample(text, "epollmux_connections_routed_total", '{route="tunnel"}') == 1
    closed_outer = sum(float(v) for v in re.findall(r'^epollmux_connections_closed_total\{listener="main",'
                                                     r'route="tunnel",reason="[^"]+"\} (\S+)$', text, re.M))
    assert closed_outer == 1, text


def test_one_time_zone_utc_in_text_and_json_lines(daemon, server):
    backend = server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", workers=1, log_format="json"),
                       ready=True, env={"TZ": "Asia/Kolkata"})          # +05:30: a local clock would show
    with connect(port) as c:
        c.sendall(b"x")
        c.shutdown(socket.SHUT_WR)
        recv_all(c)
    wait_until(lambda: any(l.startswith("{") for l in d.log_text().splitlines()), what="a JSON access line")
    now = datetime.now(timezone.utc)
    stamps = []
    for line in d.log_text().splitlines():
        if line.startswith("{"):
            stamps.append(json.loads(line)["time"])
        elif re.match(r"\d{4}-", line):
            stamps.append(line.split(" ", 1)[0])
    assert len(stamps) >= 3
    for stamp in stamps:
        assert stamp.endswith("Z"), stamp
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert abs((now - when).total_seconds()) < 300, stamp


def test_counted_nouns_agree(daemon, server, tmp_path):
    backend = server()
    port = free_port()
    d = daemon().start(make_config(port, f"127.0.0.1:{backend.port}", workers=1), ready=True)
    text = d.log_text()
    assert "starting 1 worker\n" in text and "1 workers" not in text
    assert "ready: 1 worker accepting" in text
    conf = tmp_path / "one.conf"
    conf.write_text(make_config(port, "127.0.0.1:9"))
    out = subprocess.run([sys.executable, "-m", "epollmux", "-c", str(conf), "--check"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.stdout.strip().endswith("OK (1 listener, 1 route)")


def test_debug_log_says_why_each_route_said_next(daemon, server):
    backend = server()
    port = free_port()
    routes = {"h2only": {"probe": "tls", "alpn": "h2", "backend": "127.0.0.1:9"},
              "named": {"probe": "tls", "sni": "a.test", "backend": "127.0.0.1:9"},
              "rest": {"probe": "any", "backend": f"127.0.0.1:{backend.port}"}}
    d = daemon().start(make_config(port, routes, workers=1), args=["-v"], ready=True)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()   # Python's default: SNI, no ALPN
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="b.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    with connect(port) as raw:
        raw.sendall(outgoing.read())
    text = d.wait_log("h2only=next (no ALPN offered) named=next (sni 'b.test' not in [a.test]) rest=match")
    assert "epollmux.probe" in text
