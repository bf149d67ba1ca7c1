"""Observability: per-worker metrics summed by the supervisor, the Prometheus endpoint, the stats
socket, SIGUSR1, and the access log, checked against a scripted mix of real connections.

Real processes on 127.0.0.1 only, ended by PID (conftest's `daemon` fixture); thread backends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.daemon import make_config, metrics_section
from support.net import connect, free_port, recv_all
from epollmux.observe import collector, metrics
from epollmux.tools import control

pytestmark = pytest.mark.timeout(60)


# --- helpers ---------------------------------------------------------------------------------------
def scrape(port: int) -> dict:
    """GET /metrics, parsed by prometheus_client: {(sample name, frozenset(labels)): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def ask(path: str, command: str) -> str:
    return control.ask(path, command, timeout=10)


def access_records(d, count: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(line) for line in d.log_text().splitlines() if line.startswith("{")]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def exchange(port: int, payload: bytes, wait: float = 0.0) -> tuple[int, bytes]:
    """Send payload (after `wait` seconds of silence), read the echo, close cleanly: (client port, echo)."""
    c = connect(port)
    local = c.getsockname()[1]
    if wait:
        time.sleep(wait)
    c.sendall(payload)
    got = c.recv(len(payload), socket.MSG_WAITALL)
    c.shutdown(socket.SHUT_WR)
    recv_all(c)
    c.close()
    return local, got


def closed_by_daemon(port: int, payload: bytes) -> int:
    """Send payload; the daemon closes (no route, backend refused): the client port."""
    c = connect(port)
    local = c.getsockname()[1]
    c.sendall(payload)
    try:
        recv_all(c)
    except ConnectionResetError:
        pass
    c.close()
    return local


def mix_config(metrics: int, sock, port: int, backend: int, refused: int) -> str:
    to = f"127.0.0.1:{backend}"
    return make_config(port, {"ssh": {"probe": "ssh", "backend": to},
                              "tls": {"probe": "tls", "sni": "a.example", "backend": to},
                              "web": {"probe": "http", "host": "web.example", "backend": to},
                              "dead": {"probe": "http", "host": "dead.example", "backend": f"127.0.0.1:{refused}"}},
                       workers=2, probe_timeout=0.3, on_timeout="ssh", log_format="json",
                       sections=metrics_section(metrics, stats_socket=sock))


# --- the scripted mix ------------------------------------------------------------------------------
def test_scripted_mix_access_log_and_prometheus_counters_agree(daemon, server, tmp_path):
    backend = server()
    port, mport, refused = free_port(), free_port(), free_port()
    sock_path = str(tmp_path / "stats.sock")
    d = daemon().start(mix_config(metrics=mport, sock=sock_path, port=port, backend=backend.port,
                                         refused=refused), wait=port)
    d.wait_log("ready: 2 workers accepting")
    ssh = b"SSH-2.0-OpenSSH_9.2p1 test\r\n"
    hello = client_hello("a.example")
    request = b"GET / HTTP/1.1\r\nHost: web.example\r\n\r\n"
    expect: dict[int, dict] = {}     # client port -> what its access record must say

    # one connection stays open while show conns is asked
    held = connect(port)
    held.sendall(request)
    assert held.recv(len(request), socket.MSG_WAITALL) == request
    conns = ask(sock_path, "show conns")
    held_port = held.getsockname()[1]
    line = next(ln for ln in conns.splitlines() if f"127.0.0.1:{held_port}" in ln)
    assert line.split()[2:5] == ["main", "web", "relaying"], conns
    assert line.split()[6:9] == [str(len(request)), str(len(request)), f"127.0.0.1:{backend.port}"], conns
    assert "1 connection listed" in conns
    held.shutdown(socket.SHUT_WR)
    recv_all(held)
    held.close()
    expect[held_port] = dict(route="web", reason="eof", verdict="match", up=len(request), down=len(request),
                             host="web.example")

    for _ in range(2):
        local, got = exchange(port, ssh)
        assert got == ssh
        expect[local] = dict(route="ssh", reason="eof", verdict="match", up=len(ssh), down=len(ssh))
        local, got = exchange(port, hello)
        assert got == hello
        expect[local] = dict(route="tls", reason="eof", verdict="match", up=len(hello), down=len(hello),
                             sni="a.example", alpn="h2,http/1.1")
        local, got = exchange(port, request)
        assert got == request
        expect[local] = dict(route="web", reason="eof", verdict="match", up=len(request), down=len(request),
                             host="web.example")
        local = closed_by_daemon(port, b"\x00\x01 junk that no probe takes\r\n")
        expect[local] = dict(route="-", reason="no-route", verdict="none", up=0, down=0)
        local, got = exchange(port, b"late", wait=0.6)      # silent past probe_timeout: on_timeout
        assert got == b"late"
        expect[local] = dict(route="ssh", reason="eof", verdict="timeout", up=4, down=4)
        local = closed_by_daemon(port, b"GET / HTTP/1.1\r\nHost: dead.example\r\n\r\n")
        expect[local] = dict(route="dead", reason="backend-refused", verdict="match", up=0, down=0,
                             host="dead.example")

    # the access log: one correct record per connection
    records = access_records(d, len(expect))
    assert len(records) == len(expect), records
    by_port = {int(r["client"].rsplit(":", 1)[1]): r for r in records}
    assert sorted(by_port) == sorted(expect)
    for local, want in expect.items():
        record = by_port[local]
        for key, val in want.items():
            assert record.get(key) == val, (key, record, want)
        assert record["listener"] == "main" and record["worker"] > 0 and record["duration"] >= 0
        assert ("backend" in record) == (want["route"] not in ("-",)), record
        if want["reason"] == "eof":
            assert record["spliced"] == 0      # relay = adaptive (the default): small exchanges are copied
    assert not any(r["verdict"] == "timeout" and r["duration"] < 0.3 for r in records)

    # the Prometheus endpoint: what the script did
    s = scrape(mport)
    n = len(expect)
    assert value(s, "epollmux_connections_accepted_total", listener="main") == n
    closed = {(route, reason): 0 for route, reason in
              [(w["route"], w["reason"]) for w in expect.values()]}
    for w in expect.values():
        closed[w["route"], w["reason"]] += 1
    for (route, reason), count in closed.items():
        assert value(s, "epollmux_connections_closed_total", listener="main", route=route, reason=reason) == count
    assert value(s, "epollmux_connections_closed_total") == n
    assert value(s, "epollmux_connections_active") == 0
    for route in ("ssh", "tls", "web", "dead"):
        mine = [w for w in expect.values() if w["route"] == route]
        assert value(s, "epollmux_connections_routed_total", route=route) == len(mine)
        assert value(s, "epollmux_bytes_total", route=route, direction="up") == sum(w["up"] for w in mine)
        assert value(s, "epollmux_bytes_total", route=route, direction="down") == sum(w["down"] for w in mine)
        connects = sum(1 for w in mine if w["reason"] == "eof")
        assert value(s, "epollmux_connect_seconds_count", route=route) == connects
    assert value(s, "epollmux_probe_timeouts_total", route="ssh") == 2
    routed = sum(1 for w in expect.values() if w["route"] != "-")
    assert value(s, "epollmux_sniff_seconds_count", listener="main") == routed
    assert value(s, "epollmux_sniff_seconds_bucket", listener="main", le="+Inf") == routed
    assert value(s, "epollmux_sniff_seconds_bucket", listener="main", le="0.25") == routed - 2   # the silent two
    assert value(s, "epollmux_workers", state="ready") == 2
    assert value(s, "epollmux_tls_handshakes_total") == 0
    assert value(s, "epollmux_open_fds", process="workers") > 0
    assert value(s, "epollmux_info", version="0.1.0") == 1

    # show stat says the same
    text = ask(sock_path, "show stat")
    assert f"listener main: accepted {n}, active 0" in text, text
    assert "route web: routed 3, active 0, closed 3" in text, text
    assert "  main dead backend-refused 2" in text and "  main - no-route 2" in text, text
    assert ask(sock_path, "help").startswith("show stat")
    assert "unknown command" in ask(sock_path, "show nonsense")
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660

    # SIGUSR1 writes the same to the log
    os.kill(d.pid, signal.SIGUSR1)
    text = d.wait_log("show conns:\n")
    assert f"listener main: accepted {n}, active 0" in text.split("show stat:\n", 1)[1]
    assert d.stop() == 0
    assert not os.path.exists(sock_path), "the stats socket is removed at a clean stop"
    assert not backend.errors


# --- TLS termination -------------------------------------------------------------------------------
def test_tls_handshakes_and_failures_are_counted(daemon, server, tls_ca):
    backend = server()
    port, mport = free_port(), free_port()
    leaf = tls_ca.issue("s.example")
    d = daemon().start(make_config(port, {"secure": {"probe": "tls", "tls_cert": leaf.chain, "tls_key": leaf.key,
                                                      "backend": f"127.0.0.1:{backend.port}"}},
                                   workers=1, log_format="json", sections=metrics_section(mport)), wait=port)
    d.wait_log("ready: 1 worker accepting")
    good = ssl.create_default_context(cafile=str(tls_ca.cert))
    with good.wrap_socket(connect(port), server_hostname="s.example") as tls:
        tls.sendall(b"hello")
        assert tls.recv(5) == b"hello"
        tls.unwrap()
    distrustful = ssl.create_default_context()          # does not know the test CA: it aborts the handshake
    with pytest.raises(ssl.SSLError):
        distrustful.wrap_socket(connect(port), server_hostname="s.example")
    records = access_records(d, 2)
    ok = next(r for r in records if r.get("tls"))
    assert ok["route"] == "secure" and ok["cipher"] and ok["up"] == 5
    bad = next(r for r in records if not r.get("tls"))
    s = scrape(mport)
    assert value(s, "epollmux_tls_handshakes_total", route="secure", side="client") == 1
    assert value(s, "epollmux_tls_handshake_failures_total", route="secure", side="client",
                 reason=bad["reason"]) == 1
    assert value(s, "epollmux_connections_closed_total", route="secure") == 2
    assert d.stop() == 0


# --- counters never go backwards ------------------------------------------------------------------
def reload_config(metrics: int, port: int, backend: int) -> str:
    return make_config(port, f"127.0.0.1:{backend}", workers=2, drain_timeout=5, sections=metrics_section(metrics))


def test_counters_survive_reloads_and_worker_deaths(daemon, server):
    backend = server()
    port, mport = free_port(), free_port()
    d = daemon().start(reload_config(metrics=mport, port=port, backend=backend.port), wait=port)
    d.wait_log("ready: 2 workers accepting")

    def traffic(k: int) -> None:
        for _ in range(k):
            assert exchange(port, b"x" * 100)[1] == b"x" * 100

    traffic(6)
    s = scrape(mport)
    assert value(s, "epollmux_connections_accepted_total") == 6
    assert value(s, "epollmux_bytes_total", direction="up") == 600
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log("generation 1 finished")
    s = scrape(mport)
    assert value(s, "epollmux_connections_accepted_total") == 6, "exited workers' counts are kept"
    assert value(s, "epollmux_connections_closed_total", reason="eof") == 6
    assert value(s, "epollmux_sniff_seconds_count") == 6
    assert value(s, "epollmux_reloads_total", result="ok") == 1
    traffic(4)
    s = scrape(mport)            # fresh snapshots of both live workers
    assert value(s, "epollmux_connections_accepted_total") == 10
    victim = int(next(line for line in d.log_text().splitlines()
                      if "(generation 2)" in line and "started" in line).split("worker ")[1].split()[0])
    os.kill(victim, signal.SIGKILL)
    d.wait_log(f"worker {victim} (generation 2) killed by SIGKILL unexpectedly")
    d.wait_log("ready") and time.sleep(0.3)
    s = scrape(mport)
    assert value(s, "epollmux_connections_accepted_total") == 10, "a killed worker's last snapshot is kept"
    assert value(s, "epollmux_bytes_total", direction="down") == 1000
    assert value(s, "epollmux_worker_crashes_total") == 1
    (d.config_path).write_text("[global]\nworkers = nonsense\n")
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log("reload refused (")
    s = scrape(mport)
    assert value(s, "epollmux_reloads_total", result="refused") == 1
    assert value(s, "epollmux_connections_accepted_total") == 10
    assert d.stop() == 0


# --- the endpoints are bounded ---------------------------------------------------------------------
def http_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        try:
            return recv_all(s)
        except ConnectionResetError:
            return b""


def test_hostile_scrapers_cannot_block_the_endpoint(daemon, server, tmp_path):
    backend = server()
    port, mport = free_port(), free_port()
    d = daemon().start(reload_config(metrics=mport, port=port, backend=backend.port), wait=port)
    d.wait_log("ready: 2 workers accepting")
    stalled = []
    for i in range(40):              # idle, or a request that never ends
        s = socket.create_connection(("127.0.0.1", mport), timeout=10)
        if i % 2:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        stalled.append(s)
    t0 = time.monotonic()
    s = scrape(mport)
    assert time.monotonic() - t0 < 3
    assert value(s, "epollmux_workers", state="ready") == 2
    evicted = 0
    for s in stalled:
        s.settimeout(2)
        try:
            evicted += s.recv(1) == b""
        except (socket.timeout, ConnectionResetError):
            pass
    assert evicted >= 40 - 16, evicted      # newcomers displaced the oldest stalled ones
    for s in stalled:
        s.close()
    big = http_raw(mport, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 100_000)
    assert big.startswith(b"HTTP/1.1 431 ")
    assert http_raw(mport, b"BREW /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert http_raw(mport, b"GET /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert http_raw(mport, b"\x16\x03\x01 not http\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    head = http_raw(mport, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    # a reader that never reads: the answer waits in its socket, the loop goes on
    lazy = socket.create_connection(("127.0.0.1", mport))
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert exchange(port, b"still served")[1] == b"still served"
    assert value(scrape(mport), "epollmux_connections_accepted_total") == 1
    lazy.close()
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_metrics_section_errors_and_bind_failures(daemon, tmp_path):
    from epollmux import cli
    conf = tmp_path / "bad.conf"
    conf.write_text("[metrics]\naddress = localhost:http\nstats_socket = relative.sock\ncolour = red\n"
                    "[listen]\n  [[a]]\n  address = 127.0.0.1:1\n[routes]\n  [[r]]\n  probe = any\n"
                    "  backend = 127.0.0.1:2\n")
    problems = []
    try:
        cli.load(cli.parser().parse_args(["-c", str(conf), "--check"]))
    except Exception as exc:   # ConfigError
        problems = exc.problems
    assert f"{conf}: [metrics] colour: unknown key" in problems
    assert any(p.startswith(f"{conf}: [metrics] address: ") for p in problems)
    assert f"{conf}: [metrics] stats_socket: 'relative.sock': must be an absolute path" in problems
    # a stats_socket path held by a regular file: refused at start, exit 2
    port = free_port()
    taken = tmp_path / "file.sock"
    taken.write_text("not a socket")
    d = daemon().start(f"[metrics]\nstats_socket = {taken}\n[listen]\n  [[a]]\n  address = 127.0.0.1:{port}\n"
                       f"[routes]\n  [[r]]\n  probe = any\n  backend = 127.0.0.1:2\n")
    assert d.proc.wait(15) == 2
    assert "exists and is not a socket" in d.log_text()
    # a stale socket file (nobody listening on it) is replaced
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    d = daemon().start(f"[metrics]\nstats_socket = {stale}\n[listen]\n  [[a]]\n  address = 127.0.0.1:{port}\n"
                       f"[routes]\n  [[r]]\n  probe = any\n  backend = 127.0.0.1:2\n", wait=port)
    d.wait_log("ready: ")
    assert "status:" in ask(str(stale), "show stat")
    assert d.stop() == 0


# --- the pieces, without processes -----------------------------------------------------------------
def test_histogram_buckets_are_upper_bounds_inclusive():
    h = metrics.Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.counts == [2, 2, 1] and h.value()[-1] == pytest.approx(8.65)
    real = metrics.Histogram()
    for v in (0.0001, 0.0005, 0.003, 20.0):
        real.observe(v)
    text = metrics.prometheus({"epollmux_sniff_seconds": {("a",): real.value()}})
    assert 'epollmux_sniff_seconds_bucket{listener="a",le="0.0005"} 2\n' in text
    assert 'epollmux_sniff_seconds_bucket{listener="a",le="0.005"} 3\n' in text
    assert 'epollmux_sniff_seconds_bucket{listener="a",le="10"} 3\n' in text
    assert 'epollmux_sniff_seconds_bucket{listener="a",le="+Inf"} 4\n' in text
    assert 'epollmux_sniff_seconds_count{listener="a"} 4\n' in text


def test_snapshots_round_trip_add_and_render():
    a = {"epollmux_connections_closed_total": {("l\"1", "r\\x", "eof"): 3},
         "epollmux_sniff_seconds": {("l1",): [1] + [0] * 14 + [0.0004]},
         "epollmux_connections_active": {("l1", "-", "sniffing"): 2},
         "epollmux_worker_open_fds_max": {(): 10}}
    b = metrics.decode(metrics.encode(a))
    assert b == a
    b["epollmux_worker_open_fds_max"][()] = 7
    total = metrics.add(metrics.add({}, a), b)
    assert total["epollmux_connections_closed_total"][("l\"1", "r\\x", "eof")] == 6
    assert total["epollmux_worker_open_fds_max"][()] == 10          # max, not sum
    assert total["epollmux_sniff_seconds"][("l1",)][0] == 2
    gone = metrics.add({}, a, counters_only=True)
    assert "epollmux_connections_active" not in gone
    families = {f.name: f for f in text_string_to_metric_families(metrics.prometheus(total))}
    closed = families["epollmux_connections_closed"].samples[0]
    assert closed.labels == {"listener": 'l"1', "route": "r\\x", "reason": "eof"} and closed.value == 6
    assert families["epollmux_sniff_seconds"].type == "histogram"
    with pytest.raises(ValueError):
        metrics.decode("[not json")
    assert metrics.decode('{"nope":[[1]],"epollmux_info":[["v",1],["bad"]]}') == {"epollmux_info": {("v",): 1}}


class _Loop:
    def __init__(self):
        self.timers = []

    def call_later(self, delay, callback):
        timer = _Timer(callback)
        self.timers.append(timer)
        return timer


class _Timer:
    def __init__(self, callback):
        self.callback = callback
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class _Proc:
    def __init__(self, pid):
        self.pid = pid
        self.snapshot = {}
        self.asked = []

    def ask(self, request):
        self.asked.append(request)
        return True


def test_collector_totals_never_go_backwards_and_queries_finish():
    loop = _Loop()
    c = collector.Collector(loop)
    p1, p2 = _Proc(1), _Proc(2)
    snap = {"epollmux_connections_accepted_total": {("m",): 5}, "epollmux_connections_active": {("m", "-", "x"): 1}}
    p1.snapshot = metrics.decode(metrics.encode(snap))
    p2.snapshot = metrics.decode(metrics.encode(snap))
    assert metrics.total(c.totals([p1, p2]), "epollmux_connections_accepted_total") == 10
    answers = []
    q = c.ask([p1, p2], ("snap", "conns"), answers.append)
    assert p1.asked == [f"snap {q.qid}", f"conns {q.qid}"]
    c.reply(p1, "snap", q.qid, "")
    c.reply(p1, "conns", q.qid, '[["127.0.0.1:1","m","r","relaying",1.5,1,2,null]]')
    c.reply(p1, "conns-end", q.qid, "1")
    assert not answers
    c.worker_gone(p2)                        # exits mid-question: its counters stay, the query ends
    assert answers == [q] and q.rows[1][0][3] == "relaying" and q.incomplete() == []
    total = c.totals([p1])
    assert metrics.total(total, "epollmux_connections_accepted_total") == 10
    assert metrics.total(total, "epollmux_connections_active") == 1     # gauges: live workers only
    q2 = c.ask([p1], ("snap",), answers.append)
    loop.timers[-1].callback()               # nobody answered in time
    assert answers[-1] is q2 and q2.incomplete() == [1]
