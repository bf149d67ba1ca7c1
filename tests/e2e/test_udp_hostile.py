"""A hostile UDP client: a flood of garbage first datagrams, from many source ports and from one, costs no
flow and no log line per datagram (README "UDP: listeners, flows and workers"): every datagram is counted
exactly (`epollmux_udp_dropped_total{route="-"}`, `epollmux_connections_closed_total{reason="no-route"}`),
the log carries one summary line per second at most, and a real flow is served during and after the flood."""

from __future__ import annotations

import os
import re
import time
import urllib.request

import pytest

from support.daemon import make_config, metrics_section
from support.net import free_port, wait_until
from support.udp import UdpClient, UdpEcho, free_udp_port

pytestmark = pytest.mark.timeout(180)

OPENVPN_RESET = bytes([0x38]) + bytes(8) + b"\x00" + bytes(4)       # P_CONTROL_HARD_RESET_CLIENT_V2, no tls-auth
PORTS = 200             # garbage senders, each a source port of its own
PER_PORT = 10           # garbage datagrams from each
ONE_PORT = 1000         # and from one port
BATCH = 250             # datagrams sent before waiting for the daemon to have counted them all


def metric(mport: int, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def garbage(i: int) -> bytes:
    """Datagrams no route here can take: random bytes, an empty one, a truncated OpenVPN reset, a QUIC-looking
    long header that is too short to be an Initial."""
    kind = i % 4
    if kind == 0:
        return os.urandom(1 + i % 300)
    if kind == 1:
        return b""
    if kind == 2:
        return OPENVPN_RESET[:1 + i % 13]
    return b"\xc0\x00\x00\x00\x01" + os.urandom(40)


def test_garbage_flood_costs_no_flow_and_no_log_line_per_datagram(daemon):
    vpn = UdpEcho(b"V:")
    try:
        port, mport = free_udp_port(), free_port()
        cfg = make_config({"u": {"address": f"udp:127.0.0.1:{port}", "routes": "vpn, h3"}},
                          {"vpn": {"probe": "openvpn", "backend": vpn.address},
                           "h3": {"probe": "quic", "backend": f"udp:127.0.0.1:{free_udp_port()}"}},
                          workers=1, sections=metrics_section(mport))
        d = daemon().start(cfg, ready=True)
        good = UdpClient(port)
        assert good.ask(OPENVPN_RESET) == b"V:" + OPENVPN_RESET
        senders = [UdpClient(port) for _ in range(PORTS)]
        one = UdpClient(port)
        plan = [(senders[i % PORTS], garbage(i)) for i in range(PORTS * PER_PORT)]
        plan += [(one, garbage(i)) for i in range(ONE_PORT)]
        started, sent = time.monotonic(), 0
        for at in range(0, len(plan), BATCH):
            for client, data in plan[at:at + BATCH]:
                client.send(data)
            sent += len(plan[at:at + BATCH])
            wait_until(lambda: metric(mport, "epollmux_udp_dropped_total", route="-") >= sent, timeout=30,
                       what=f"{sent} datagrams counted")
            assert good.ask(b"during %d" % at) == b"V:during %d" % at          # the real flow, mid-flood
        elapsed = time.monotonic() - started
        total = len(plan)
        assert metric(mport, "epollmux_udp_dropped_total", route="-") == total
        assert metric(mport, "epollmux_connections_closed_total", listener="u", route="-", reason="no-route") == total
        assert metric(mport, "epollmux_udp_flows_active", listener="u", route="vpn", state="relaying") == 1
        assert metric(mport, "epollmux_udp_flows_active", listener="u", route="-", state="pending") == 0
        fresh = UdpClient(port)                                                     # a new real flow after it
        assert fresh.ask(OPENVPN_RESET) == b"V:" + OPENVPN_RESET

        summary = re.compile(r"u: (\d+) datagrams of no flow dropped in the last [\d.]+ s: no-route=(\d+), last from ")
        wait_until(lambda: sum(int(m.group(2)) for m in summary.finditer(d.log_text())) == total, timeout=20,
                   what="the summary lines to count every datagram")
        lines = d.log_text().splitlines()
        summaries = [line for line in lines if summary.search(line)]
        assert len(summaries) <= elapsed + 3, (len(summaries), elapsed)          # one a second at most
        assert not [line for line in lines if "reason=no-route" in line]         # no access line per datagram
        assert len(lines) < 60 + len(summaries), lines[-20:]
        assert len(vpn.senders) == 2                                             # only the real flows got there
    finally:
        vpn.close()
