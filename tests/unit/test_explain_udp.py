"""`--explain` of UDP captures: pcap.udp_flows groups datagrams by client address and port, and explainudp
names the route each flow takes over the recorded first datagrams (tests/fixtures/udp/)."""

from __future__ import annotations

import io
import socket
import struct
from types import SimpleNamespace

from epollmux.tools import explain, explainudp, pcap
from epollmux.wire.udpprobes import prepare_udp_options
from support.udp_fixtures import UDP_FIXTURES

SERVER4, SERVER6 = ("10.9.8.7", 443), ("2001:db8::7", 443)
QUIC_CLIENT, VPN_CLIENT, WG_CLIENT, JUNK_CLIENT = ("10.1.2.3", 40001), ("10.1.2.3", 40002), \
    ("2001:db8::3", 40003), ("10.1.2.4", 40004)


def udp(src, dst, payload: bytes) -> bytes:
    return struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload


def ip(src, dst, payload: bytes) -> bytes:
    segment = udp(src, dst, payload)
    if ":" in src[0]:
        return struct.pack("!IHBB16s16s", 6 << 28, len(segment), 17, 64, socket.inet_pton(socket.AF_INET6, src[0]),
                           socket.inet_pton(socket.AF_INET6, dst[0])) + segment
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 1, 0, 64, 17, 0,
                       socket.inet_pton(socket.AF_INET, src[0]), socket.inet_pton(socket.AF_INET, dst[0])) + segment


def ethernet_pcap(packets: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for packet in packets:
        ethertype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
        frame = bytes(12) + struct.pack("!H", ethertype) + packet
        out += struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    return out


def capture() -> bytes:
    """Four flows interleaved: a QUIC hello over two Initials (a server reply between them), an OpenVPN
    reset, a WireGuard initiation over IPv6, and junk."""
    q1, q2 = UDP_FIXTURES["quic_aioquic_v1_split"].datagrams
    return ethernet_pcap([
        ip(QUIC_CLIENT, SERVER4, q1),
        ip(VPN_CLIENT, SERVER4, UDP_FIXTURES["openvpn_udp_tls_auth"].datagrams[0]),
        ip(SERVER4, QUIC_CLIENT, b"\xc0server reply"),
        ip(QUIC_CLIENT, SERVER4, q2),
        ip(WG_CLIENT, SERVER6, UDP_FIXTURES["wireguard_initiation"].datagrams[0]),
        ip(JUNK_CLIENT, SERVER4, b"hello?"),
    ])


def route(name: str, probe: str, **raw):
    return SimpleNamespace(name=name, probe=probe, opts=prepare_udp_options(probe, raw),
                           backend=f"udp:127.0.0.1:{len(name)}")


def config(udp: bool = True):
    routes = [route("h3", "quic", sni="www.example.org"), route("vpn", "openvpn"), route("wg", "wireguard")]
    address = SimpleNamespace(text="udp:0.0.0.0:443", sockaddr=("0.0.0.0", 443))
    listener = SimpleNamespace(name="edge", addresses=[address], routes=routes, udp=udp)
    tcp = SimpleNamespace(name="tcp", addresses=[], routes=[SimpleNamespace(name="ssh", probe="ssh", opts={})],
                          udp=False)
    return SimpleNamespace(listeners=[tcp, listener], settings=SimpleNamespace(max_probe_bytes=16384))


def test_udp_flows_are_keyed_by_client_address_and_port():
    flows = pcap.udp_flows(capture())
    assert [f.client for f in flows] == [QUIC_CLIENT, VPN_CLIENT, WG_CLIENT, JUNK_CLIENT]
    quic_flow = flows[0]
    assert quic_flow.server == SERVER4 and quic_flow.replies == 1
    assert quic_flow.datagrams == list(UDP_FIXTURES["quic_aioquic_v1_split"].datagrams)
    assert pcap.udp_flows(ethernet_pcap([])) == []


def chosen(text: str) -> dict[str, str]:
    out, flow = {}, None
    for line in text.splitlines():
        if line.startswith("flow "):
            flow = line.split()[1]
        elif "chosen:" in line:
            out[flow] = line.split("chosen: ", 1)[1].split(" (")[0]
    return out


def test_explain_names_the_route_of_each_flow():
    text = explainudp.explain_flows(config(), "udp.pcap", pcap.udp_flows(capture()))
    assert chosen(text) == {"10.1.2.3:40001": "route h3", "10.1.2.3:40002": "route vpn",
                            "[2001:db8::3]:40003": "route wg", "10.1.2.4:40004": "none, drop the flow"}
    assert "seen: sni www.example.org, alpn h3" in text
    assert "match on datagram 2" in text                  # the split hello waits for the second Initial
    assert "listener tcp" not in text


def test_explain_without_udp_listeners_uses_the_udp_probe_ones():
    text = explainudp.explain_flows(config(udp=False), "x", pcap.udp_flows(capture()))
    assert "no listener has udp: addresses" in text and chosen(text)["10.1.2.3:40002"] == "route vpn"


def test_explain_main_reads_a_udp_only_pcap(tmp_path):
    path = tmp_path / "udp.pcap"
    path.write_bytes(capture())
    out = io.StringIO()
    assert explain.main(config(), [str(path)], out) == 0
    assert chosen(out.getvalue())["10.1.2.3:40001"] == "route h3"


def test_explain_says_why_a_named_route_said_next():
    cfg = config()
    cfg.listeners[1].routes.insert(0, route("other", "quic", sni="other.example.net"))
    text = explainudp.explain_flows(cfg, "x", pcap.udp_flows(capture()))
    assert "(sni 'www.example.org' not in [other.example.net])" in text
    assert chosen(text)["10.1.2.3:40001"] == "route h3"


def test_explain_with_a_config_of_udp_and_tcp_listeners(tmp_path):
    """A real config (udp: addresses): the UDP flows go to the UDP listener's routes, never to the TCP one."""
    from epollmux import config as configmod
    conf = tmp_path / "epollmux.conf"
    conf.write_text("""
[listen]
  [[tcp]]
  address = 127.0.0.1:4443
  routes = ssh
  [[edge]]
  address = udp:127.0.0.1:443
  routes = other, h3, vpn, wg
[routes]
  [[ssh]]
  probe = ssh
  backend = 127.0.0.1:22
  [[other]]
  probe = quic
  sni = other.example.net
  backend = udp:127.0.0.1:9443
  [[h3]]
  probe = quic
  sni = *.example.org
  alpn = h3
  backend = udp:127.0.0.1:8443
  [[vpn]]
  probe = openvpn
  backend = udp:127.0.0.1:1194
  [[wg]]
  probe = wireguard
  backend = udp:127.0.0.1:51820
""")
    cfg = configmod.load_file(str(conf))
    path = tmp_path / "udp.pcap"
    path.write_bytes(capture())
    out = io.StringIO()
    assert explain.main(cfg, [str(path)], out) == 0
    text = out.getvalue()
    assert chosen(text) == {"10.1.2.3:40001": "route h3", "10.1.2.3:40002": "route vpn",
                            "[2001:db8::3]:40003": "route wg", "10.1.2.4:40004": "none, drop the flow"}
    assert "listener tcp" not in text and "note:" not in text
    assert "backend: udp:127.0.0.1:8443" in text
    assert "(sni 'www.example.org' not in [other.example.net])" in text


def test_a_tcp_capture_skips_the_udp_listeners(tmp_path):
    """A file of TCP first bytes with a config holding a UDP listener: only the TCP listeners are explained
    (the UDP routes' probes are not TCP probes: replaying them as a stream raised KeyError)."""
    from epollmux import config as configmod
    conf = tmp_path / "epollmux.conf"
    conf.write_text("""
[listen]
  [[tcp]]
  address = 127.0.0.1:4443
  routes = ssh
  [[edge]]
  address = udp:127.0.0.1:443
  routes = h3
[routes]
  [[ssh]]
  probe = ssh
  backend = 127.0.0.1:22
  [[h3]]
  probe = quic
  backend = udp:127.0.0.1:8443
""")
    first = tmp_path / "ssh.bin"
    first.write_bytes(b"SSH-2.0-OpenSSH_9.2\r\n")
    out = io.StringIO()
    assert explain.main(configmod.load_file(str(conf)), [str(first)], out) == 0
    assert "chosen: route ssh" in out.getvalue() and "listener edge" not in out.getvalue()
