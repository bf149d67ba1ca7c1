"""UDP listeners with real peers: flows routed by probe and relayed with their datagram boundaries, bad
first datagrams, the flow bounds, idle expiry, a reload that keeps an established flow, one flow per
worker with two workers, the privilege drop on a port below 1024, and real OpenVPN over UDP."""

from __future__ import annotations

import os
import re
import signal
import socket

import pytest

from support.daemon import make_config
from support.net import recv_all, wait_until
from support.udp import UdpClient, UdpEcho, free_port_both, free_udp_port, low_udp_port

OPENVPN_RESET = bytes([0x38]) + bytes(8) + b"\x00" + bytes(4)       # P_CONTROL_HARD_RESET_CLIENT_V2, no tls-auth


@pytest.fixture
def echo():
    made = []

    def make(tag: bytes = b"") -> UdpEcho:
        made.append(UdpEcho(tag))
        return made[-1]
    yield make
    for e in made:
        e.close()


def access_lines(d, client_port: int | None = None) -> list[str]:
    lines = [line for line in d.log_text().splitlines() if "epollmux.access:" in line and "listener=u" in line]
    if client_port is not None:
        lines = [line for line in lines if f"client=127.0.0.1:{client_port} " in line]
    return lines


def field(line: str, name: str) -> str:
    return re.search(rf"\b{name}=(\S+)", line).group(1)


def test_flows_routed_by_probe_relayed_whole_beside_tcp_on_the_same_port(daemon, echo, server):
    vpn, other = echo(b"V:"), echo(b"O:")
    port = free_port_both()
    tcp_backend = server()
    cfg = make_config({"u": {"address": f"udp:127.0.0.1:{port}", "routes": "vpn, rest"},
                       "t": {"address": f"127.0.0.1:{port}", "routes": "tcp"}},
                      {"vpn": {"probe": "openvpn", "backend": vpn.address},
                       "rest": {"probe": "any", "backend": other.address.removeprefix("udp:")},
                       "tcp": {"probe": "any", "backend": f"127.0.0.1:{tcp_backend.port}"}}, workers=1)
    d = daemon().start(cfg, ready=True)
    a, b = UdpClient(port), UdpClient(port)
    assert a.ask(OPENVPN_RESET) == b"V:" + OPENVPN_RESET
    assert b.ask(b"hello") == b"O:hello"
    big = os.urandom(9000)
    assert a.ask(big) == b"V:" + big                     # one datagram in, one out, whole
    for i in range(20):
        assert b.ask(b"x" * i) == b"O:" + b"x" * i       # boundaries kept, 0-length included
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:     # TCP on the same port number
        c.sendall(b"over tcp")
        c.shutdown(socket.SHUT_WR)
        assert recv_all(c) == b"over tcp"
    d.stop()
    line = access_lines(d, a.port)[0]
    assert field(line, "route") == "vpn" and field(line, "dgrams_up") == "2" and field(line, "dgrams_down") == "2"
    assert field(line, "up") == str(len(OPENVPN_RESET) + 9000) and field(line, "reason") == "udp-stop"
    assert field(access_lines(d, b.port)[0], "dgrams_up") == "21"


def test_bad_first_datagrams_are_dropped_with_no_route(daemon, echo):
    vpn = echo(b"V:")
    port = free_udp_port()
    cfg = make_config({"u": f"udp:127.0.0.1:{port}"}, {"vpn": {"probe": "openvpn", "backend": vpn.address}},
                      workers=1)
    d = daemon().start(cfg, ready=True)
    good = UdpClient(port)
    assert good.ask(OPENVPN_RESET) == b"V:" + OPENVPN_RESET
    bad = [UdpClient(port) for _ in range(3)]
    for client, data in zip(bad, (os.urandom(300), b"", OPENVPN_RESET[:1])):
        client.send(data)
    dropped = re.compile(r"u: \d+ datagrams of no flow dropped in the last [\d.]+ s: no-route=(\d+),")
    wait_until(lambda: sum(int(n) for n in dropped.findall(d.log_text())) == 3, timeout=10)
    assert not [line for line in access_lines(d) if "reason=no-route" in line]     # summed up, not one line each
    assert good.ask(b"still") == b"V:still"
    assert not vpn.senders.keys() - {s for s in vpn.senders if vpn.senders[s] >= 2}   # only the good flow got there


def test_flow_flood_stays_bounded_and_established_flow_works(daemon, echo):
    backend = echo(b"E:")
    port = free_udp_port()
    cfg = make_config({"u": f"udp:127.0.0.1:{port}"}, {"all": {"probe": "any", "backend": backend.address}},
                      workers=1, max_flows=20, max_flows_per_source=0)
    d = daemon().start(cfg, ready=True)
    kept = UdpClient(port)
    assert kept.ask(b"first") == b"E:first"
    flood = [UdpClient(port) for _ in range(200)]
    for c in flood:
        c.send(b"new")
        c.sock.setblocking(False)
    answered = set()

    def answers() -> int:
        for c in flood:
            try:
                answered.add(c.port) if c.recv() == b"E:new" else None
            except BlockingIOError:
                pass
        return len(answered)
    wait_until(lambda: answers() >= 19, timeout=20)
    d.wait_log("max_flows reached")
    assert answers() == 19                     # 20 flows at most, one of them the established one
    assert kept.ask(b"again") == b"E:again"
    d.wait_log("max_flows reached")
    assert len(backend.senders) == 20


def test_flows_per_source_bounded(daemon, echo):
    backend = echo(b"E:")
    port = free_udp_port()
    cfg = make_config({"u": f"udp:127.0.0.1:{port}"}, {"all": {"probe": "any", "backend": backend.address}},
                      workers=1, max_flows_per_source=5)
    d = daemon().start(cfg, ready=True)
    clients = [UdpClient(port, timeout=0.3) for _ in range(8)]
    answered = 0
    for c in clients:
        try:
            answered += c.ask(b"q") == b"E:q"
        except socket.timeout:
            pass
    assert answered == 5
    d.wait_log("max_flows_per_source reached")


def test_idle_flow_expires(daemon, echo):
    backend = echo()
    port = free_udp_port()
    cfg = make_config({"u": f"udp:127.0.0.1:{port}"},
                      {"all": {"probe": "any", "backend": backend.address, "udp_idle_timeout": 0.5}}, workers=1)
    d = daemon().start(cfg, ready=True)
    c = UdpClient(port)
    for _ in range(3):
        assert c.ask(b"ping") == b"ping"
    line = wait_until(lambda: access_lines(d, c.port), timeout=20)[0]
    assert field(line, "reason") == "udp-idle"
    assert field(line, "dgrams_up") == "3" and float(field(line, "duration").rstrip("s")) >= 0.5
    assert c.ask(b"back") == b"back"            # a new flow for the same client port


def test_reload_keeps_an_established_flow(daemon, echo):
    old, new = echo(b"old:"), echo(b"new:")
    port = free_udp_port()
    routes = {"all": {"probe": "any", "backend": old.address, "udp_idle_timeout": 3}}
    d = daemon().start(make_config({"u": f"udp:127.0.0.1:{port}"}, routes, workers=1), ready=True)
    first = d.workers()
    c = UdpClient(port)
    assert c.ask(b"a") == b"old:a"
    routes["all"]["backend"] = new.address
    d.write_config(make_config({"u": f"udp:127.0.0.1:{port}"}, routes, workers=1))
    d.signal(signal.SIGHUP)
    d.wait_workers(1, exclude=set(first))
    d.wait_log("retired by a reload")
    for i in range(5):
        assert c.ask(b"%d" % i) == b"old:%d" % i        # still the old worker's flow, same backend
    fresh = UdpClient(port)
    assert fresh.ask(b"b") == b"new:b"                   # new flows: the new configuration
    line = wait_until(lambda: access_lines(d, c.port), timeout=20)[0]      # the old worker's line, once idle
    assert field(line, "dgrams_up") == "6" and field(line, "reason") == "udp-idle"


def test_two_workers_one_flow_one_worker(daemon, echo):
    """Each client fires 100 datagrams at once, before any answer: the worker slots' SO_REUSEPORT group
    gives every datagram of a new flow to one worker, so no second flow starts elsewhere (README "UDP")."""
    backend = echo()
    port = free_udp_port()
    cfg = make_config({"u": f"udp:127.0.0.1:{port}"}, {"all": {"probe": "any", "backend": backend.address}},
                      workers=2)
    d = daemon().start(cfg, ready=True)
    clients = [UdpClient(port) for _ in range(20)]
    for c in clients:
        for i in range(100):
            c.send(b"%d" % i)
    for c in clients:                              # the last datagram of each has reached the backend
        wait_until(lambda: c.recv() == b"99", timeout=20)
    d.stop()
    for c in clients:
        lines = access_lines(d, c.port)
        assert len(lines) == 1, lines               # one flow, in one worker
    # a datagram that found another new flow's socket between its bind and connect was dropped (counted as
    # udp_stray); every datagram a flow counted reached the backend through that one flow
    assert sum(int(field(line, "dgrams_up")) for line in access_lines(d)) == sum(backend.senders.values())
    assert len({field(line, "worker") for line in access_lines(d)}) == 2        # both workers took flows
    assert len(backend.senders) == 20


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind a port below 1024 and drop to nobody")
def test_privilege_drop_with_a_udp_port_below_1024(daemon, echo):
    backend = echo(b"E:")
    port = low_udp_port()
    cfg = make_config({"u": f"udp:127.0.0.1:{port}"}, {"all": {"probe": "any", "backend": backend.address}},
                      workers=2, user="nobody")
    d = daemon().start(cfg, ready=True)
    for pid in d.workers():
        status = open(f"/proc/{pid}/status").read()
        assert re.search(r"^Uid:\s+65534\s+65534\s+65534", status, re.M), status
        caps = int(re.search(r"^CapEff:\s+(\w+)", status, re.M).group(1), 16)
        assert caps == 1 << 10                  # CAP_NET_BIND_SERVICE and nothing else
    clients = [UdpClient(port) for _ in range(10)]
    for c in clients:
        assert c.ask(b"x") == b"E:x"
        assert c.ask(b"y") == b"E:y"


def test_real_openvpn_over_udp_beside_a_quic_route(daemon, openvpn, tmp_path):
    from support.peers import openvpn_keys
    keys = openvpn_keys(tmp_path / "keys")
    vpn_port, port = free_udp_port(), free_udp_port()
    server = openvpn("server", vpn_port, keys, proto="udp")
    cfg = make_config({"u": f"udp:127.0.0.1:{port}"},
                      {"h3": {"probe": "quic", "backend": f"udp:127.0.0.1:{free_udp_port()}"},
                       "vpn": {"probe": "openvpn", "backend": f"udp:127.0.0.1:{vpn_port}"}}, workers=1)
    d = daemon().start(cfg, ready=True)
    client = openvpn("client", port, keys, proto="udp")
    client.wait_ready()
    server.wait_ready()
    d.stop()
    line = access_lines(d)[0]
    assert field(line, "route") == "vpn" and int(field(line, "dgrams_down")) > 3


def test_http3_routed_by_sni_to_two_aioquic_servers_beside_tcp(daemon, h3server, tls_ca, server):
    """Real HTTP/3: one UDP listener, two `quic` routes by SNI, each to its own aioquic server with its own
    certificate; a TCP listener on the same port number keeps serving meanwhile."""
    from support import h3
    alpha = h3server(tls_ca.issue("alpha.test").chain, tls_ca.issue("alpha.test").key, b"from-alpha")
    beta = h3server(tls_ca.issue("beta.test").chain, tls_ca.issue("beta.test").key, b"from-beta")
    tcp_backend = server()
    port = free_port_both()
    cfg = make_config({"u": {"address": f"udp:127.0.0.1:{port}", "routes": "a, b"},
                       "t": {"address": f"127.0.0.1:{port}", "routes": "tcp"}},
                      {"a": {"probe": "quic", "sni": "alpha.test", "backend": f"127.0.0.1:{alpha.port}"},
                       "b": {"probe": "quic", "sni": "beta.test", "backend": f"udp:127.0.0.1:{beta.port}"},
                       "tcp": {"probe": "any", "backend": f"127.0.0.1:{tcp_backend.port}"}}, workers=2)
    d = daemon().start(cfg, ready=True)
    for _ in range(2):
        assert h3.get(port, "alpha.test", str(tls_ca.cert)) == b"from-alpha"
        assert h3.get(port, "beta.test", str(tls_ca.cert)) == b"from-beta"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"tcp too")
            c.shutdown(socket.SHUT_WR)
            assert recv_all(c) == b"tcp too"
    d.stop()
    lines = access_lines(d)
    assert sorted(field(line, "route") for line in lines) == ["a", "a", "b", "b"]
    assert {field(line, "sni") for line in lines if field(line, "route") == "a"} == {"alpha.test"}
    assert all(int(field(line, "dgrams_down")) >= 2 for line in lines)


def test_wildcard_listeners_reply_from_the_address_the_client_wrote_to(daemon, echo):
    """udp:0.0.0.0 and udp:[::] listeners: a connected client socket takes only datagrams from the address
    it connected to, so each answer proves the flow replied from 127.0.0.1 / ::1 and the listening port."""
    backend = echo(b"E:")
    port = free_udp_port()
    cfg = make_config({"u": {"address": f"udp:0.0.0.0:{port}, udp:[::]:{port}"}},
                      {"all": {"probe": "any", "backend": backend.address}}, workers=1)
    daemon().start(cfg, ready=True)
    for host in ("127.0.0.1", "::1"):
        c = UdpClient(port, host=host)
        assert c.ask(b"one") == b"E:one"
        assert c.ask(b"two") == b"E:two"


def test_flows_in_status_and_metrics(daemon, echo):
    """STATUS= counts the flows held; /metrics has them active, then their datagrams and bytes each way."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    from support.daemon import metrics_section
    from support.net import free_port

    def samples() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    backend = echo(b"E:")
    port, mport = free_udp_port(), free_port()
    cfg = make_config({"u": f"udp:127.0.0.1:{port}"}, {"all": {"probe": "any", "backend": backend.address}},
                      workers=1, sections=metrics_section(mport))
    d = daemon().start(cfg, ready=True)
    clients = [UdpClient(port) for _ in range(3)]
    for c in clients:
        assert c.ask(b"12345") == b"E:12345"
    d.notify.wait_for("STATUS", "1 worker, 0 open connections, 0.0 connections/s, 3 UDP flows", timeout=20)
    wait_until(lambda: samples().get(("epollmux_udp_flows_active",
                                      (("listener", "u"), ("route", "all"), ("state", "relaying")))) == 3,
               timeout=20)
    got = samples()
    assert got[("epollmux_udp_datagrams_total", (("direction", "up"), ("route", "all")))] == 3
    assert got[("epollmux_udp_datagrams_total", (("direction", "down"), ("route", "all")))] == 3
    assert got[("epollmux_bytes_total", (("direction", "down"), ("route", "all")))] == 21


def test_backend_without_a_listener_ends_the_flow_as_refused(daemon, echo):
    """The ICMP port unreachable of a UDP backend nobody listens on ends the flow (backend-refused); the
    others go on."""
    good = echo(b"G:")
    port = free_udp_port()
    cfg = make_config({"u": {"address": f"udp:127.0.0.1:{port}", "routes": "dead, live"}},
                      {"dead": {"probe": "regex", "regex": "^dead", "backend": f"udp:127.0.0.1:{free_udp_port()}"},
                       "live": {"probe": "any", "backend": good.address}}, workers=1)
    d = daemon().start(cfg, ready=True)
    c, ok = UdpClient(port), UdpClient(port)
    c.send(b"dead 1")
    line = wait_until(lambda: c.send(b"dead 2") or access_lines(d, c.port), timeout=20)[0]
    assert field(line, "route") == "dead" and field(line, "reason") == "backend-refused"
    assert ok.ask(b"alive") == b"G:alive"
