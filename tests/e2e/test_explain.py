"""`epollmux -c FILE --explain CAPTURE...`: what the daemon would do with a client's first bytes.

The captured real-client fixtures (tests/fixtures/probes/*.bin, and tcpdump captures of real clients in
tests/fixtures/pcap/) are explained, then sent to a running daemon with the same configuration: the route
explained is the route the daemon chose (its access log says). Synthetic captures cover every link type,
IPv4/IPv6, pcapng in both byte orders and TCP reassembly (out of order, retransmitted, overlapping).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.daemon import make_config, REPO
from support.net import connect, free_port, recv_upto
from epollmux import config
from epollmux.tools import explain, pcap
from support.probe_fixtures import FIXTURE_DIR, FIXTURES

PCAP_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "pcap"
PCAPS = sorted(PCAP_DIR.glob("*.pcap"))

pytestmark = pytest.mark.timeout(60)

ROUTES = {"ssh": {"probe": "ssh"}, "h2": {"probe": "tls", "sni": "www.example.org", "alpn": "h2"},
          "www": {"probe": "tls", "sni": "*.example.org", "send_proxy": "v2"}, "tls": {"probe": "tls"},
          "web": {"probe": "http", "host": "www.example.org"}, "vpn": {"probe": "openvpn"},
          "log": {"probe": "syslog"}}


def routes_config(port: int, backend: int) -> str:
    """Seven routes, every one to the same backend: the route a flight takes shows only in the log."""
    return make_config(port, {name: {**opts, "backend": f"127.0.0.1:{backend}"} for name, opts in ROUTES.items()},
                       workers=1, probe_timeout=0.4, on_timeout="ssh", log_format="json")


def run_explain(conf: Path, paths: list) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "epollmux", "-c", str(conf), "--explain", *map(str, paths)],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


def chosen_routes(output: str) -> dict[str, str]:
    """capture path -> the route explained for the first listener ('-' for a close)."""
    out = {}
    for block in output.split("capture ")[1:]:
        path = block.split(":", 1)[0]
        match = re.search(r"^  chosen: (?:route (\S+)|none)", block, re.M)
        assert match, block
        out[path] = match.group(1) or "-"
    return out


def daemon_route(port: int, data: bytes) -> tuple[int, bool]:
    """Send a client's first bytes and read until the daemon or the echo backend is done: (client port, echoed)."""
    c = connect(port)
    local = c.getsockname()[1]
    c.sendall(data)
    got = recv_upto(c, len(data))
    c.close()
    return local, got == data


def test_explain_chooses_the_route_the_daemon_chooses(daemon, server, tmp_path):
    backend = server()
    port = free_port()
    cfg = routes_config(port, backend.port)
    d = daemon().start(cfg, wait=port)
    d.wait_log("ready: 1 worker accepting")
    partial = tmp_path / "tls_partial_hello.bin"       # a hello cut short: the tls routes wait, then on_timeout
    partial.write_bytes(FIXTURES["tls_curl_sni"].data[:300])
    bins = [FIXTURE_DIR / f"{name}.bin" for name in FIXTURES] + [partial]
    code, out, err = run_explain(d.config_path, bins + PCAPS)
    assert code == 0, err
    explained = chosen_routes(out)
    assert len(explained) == len(bins) + len(PCAPS)
    ports = {}
    for path in bins + PCAPS:
        data = pcap.first_client_payload(path.read_bytes()).data if path.suffix == ".pcap" else path.read_bytes()
        local, _ = daemon_route(port, data)
        ports[local] = str(path)
    deadline = time.monotonic() + 15
    while True:
        records = [json.loads(line) for line in d.log_text().splitlines() if line.startswith("{")]
        if len(records) >= len(ports) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    daemon_choice = {ports[int(r["client"].rsplit(":", 1)[1])]: r["route"] for r in records}
    assert daemon_choice == explained, out
    # the set is not trivial: several routes, a timeout and a close among them
    assert {"ssh", "h2", "www", "tls", "web", "vpn", "log", "-"} <= set(explained.values())
    assert explained[str(FIXTURE_DIR / "socks5_curl.bin")] == "-"
    assert explained[str(FIXTURE_DIR / "tls_python_sni.bin")] == "www"
    assert explained[str(FIXTURE_DIR / "http_curl_h2c_prior.bin")] == "-"       # no Host header: web says next
    assert explained[str(partial)] == "ssh"
    block = out.split(f"capture {partial}:")[1].split("\ncapture ")[0]
    assert "chosen: route ssh (timeout: route h2 still says again after 300 bytes, on_timeout after 0.4s)" in block
    block = out.split(f"capture {FIXTURE_DIR / 'tls_curl_h2.bin'}:")[1].split("\ncapture ")[0]
    assert "seen: sni www.example.org, alpn h2,http/1.1" in block
    assert re.search(r"^  2\. h2 +probe tls +match +\[sni=www.example.org, alpn=h2\]  <- chosen$", block, re.M), block
    assert re.search(r"^  3\. www +probe tls +\(match\) .*not reached", block, re.M), block
    assert d.stop() == 0


def test_real_pcaps_give_the_client_payload(tmp_path):
    """tcpdump captures (tests/capture_pcaps.py): Ethernet and Linux cooked v1/v2, IPv4 and IPv6."""
    found = {p.stem: pcap.first_client_payload(p.read_bytes()) for p in PCAPS}
    assert set(found) >= {"tls_curl_ipv4_ethernet", "http_curl_ipv6_sll", "ssh_openssh_ipv4_sll2",
                          "tls_curl_ipv6_ethernet"}
    assert found["tls_curl_ipv4_ethernet"].link == "Ethernet"
    assert found["http_curl_ipv6_sll"].link == "Linux cooked" and found["http_curl_ipv6_sll"].client[0] == "::1"
    assert found["ssh_openssh_ipv4_sll2"].link == "Linux cooked v2"
    assert found["ssh_openssh_ipv4_sll2"].data.startswith(b"SSH-2.0-OpenSSH_")
    assert found["http_curl_ipv6_sll"].data.startswith(b"GET /index.html HTTP/1.1\r\nHost: www.example.org:")
    from epollmux.wire.clienthello import parse_client_hello
    for name in ("tls_curl_ipv4_ethernet", "tls_curl_ipv6_ethernet"):
        hello = parse_client_hello(found[name].data)
        assert hello.sni == "www.example.org" and hello.alpn == ("http/1.1",), name
        assert hello.length == len(found[name].data)


# --- synthetic captures ----------------------------------------------------------------------------
CLIENT4, SERVER4 = ("10.1.2.3", 40001), ("10.9.8.7", 443)
CLIENT6, SERVER6 = ("2001:db8::3", 40001), ("2001:db8::7", 443)


def tcp(src, dst, seq: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", src[1], dst[1], seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def ipv4(src, dst, segment: bytes, frag: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 1, frag, 64, 6, 0,
                       socket.inet_pton(socket.AF_INET, src[0]), socket.inet_pton(socket.AF_INET, dst[0])) + segment


def ipv6(src, dst, segment: bytes, hop_by_hop: bool = False) -> bytes:
    ext = bytes([6, 0]) + bytes(6) if hop_by_hop else b""
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(segment), 0 if hop_by_hop else 6, 64,
                       socket.inet_pton(socket.AF_INET6, src[0]), socket.inet_pton(socket.AF_INET6, dst[0])) \
        + ext + segment


def link(kind: str, packet: bytes) -> tuple[int, bytes]:
    v6 = packet[0] >> 4 == 6
    ethertype = 0x86DD if v6 else 0x0800
    if kind == "ethernet":
        return 1, bytes(12) + struct.pack("!H", ethertype) + packet + bytes(8)       # trailing padding
    if kind == "vlan":
        return 1, bytes(12) + struct.pack("!HHH", 0x8100, 7, ethertype) + packet
    if kind == "sll":
        return 113, struct.pack("!HHH8sH", 0, 772, 0, bytes(8), ethertype) + packet
    if kind == "sll2":
        return 276, struct.pack("!HHIHBB8s", ethertype, 0, 1, 772, 0, 0, bytes(8)) + packet
    if kind == "null":
        return 0, struct.pack("<I", 30 if v6 else 2) + packet          # host order (little-endian writer)
    if kind == "loop":
        return 108, struct.pack("!I", 24 if v6 else 2) + packet
    return 101, packet                                                # raw


def classic(frames, order: str = "<", nano: bool = False) -> bytes:
    linktype = frames[0][0]
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for _, frame in frames:
        out += struct.pack(order + "IIII", 0, 0, len(frame), len(frame)) + frame
    return out


def pcapng(frames, order: str = "<", simple: bool = False) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack(order + "II", btype, len(body) + 12) + body + struct.pack(order + "I", len(body) + 12)
    out = block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack(order + "HHI", frames[0][0], 0, 0))
    for _, frame in frames:
        if simple:
            out += block(3, struct.pack(order + "I", len(frame)) + frame)
        else:
            out += block(6, struct.pack(order + "IIIII", 0, 0, 0, len(frame), len(frame)) + frame)
    return out


def conversation(data: bytes, v6: bool, cuts: list[int], kind: str, shuffle: bool = True) -> list:
    """SYN, SYN-ACK, a server banner, another connection's packet, the client's data cut at `cuts` (the
    second piece sent twice and the last two swapped when shuffle), then the client's FIN; over IPv4 a
    fragment too."""
    client, server = (CLIENT6, SERVER6) if v6 else (CLIENT4, SERVER4)
    ip = ipv6 if v6 else ipv4
    isn = 0xFFFFFF00                   # the sequence numbers wrap inside the payload
    other = ("2001:db8::99", 1234) if v6 else ("10.0.0.99", 1234)
    packets = [ip(client, server, tcp(client, server, isn, 0x02)),
               ip(server, client, tcp(server, client, 777, 0x12)),
               ip(server, client, tcp(server, client, 778, 0x18, b"SSH-2.0-server\r\n")),
               ip(other, server, tcp(other, server, 5, 0x18, b"another connection"))]
    bounds = [0, *cuts, len(data)]
    pieces = [(isn + 1 + a, data[a:b]) for a, b in zip(bounds, bounds[1:])]
    order = list(pieces)
    if shuffle and len(order) >= 3:
        order = [order[0], order[1], order[1], *order[2:-2], order[-1], order[-2]]
    for seq, piece in order:
        packets.append(ip(client, server, tcp(client, server, seq & 0xFFFFFFFF, 0x18, piece)))
    packets.append(ip(client, server, tcp(client, server, (isn + 1 + len(data)) & 0xFFFFFFFF, 0x11)))
    if not v6:
        packets.insert(5, ip(client, server, tcp(client, server, 0, 0x18, b"FRAGMENT"), frag=0x2000))
    return [link(kind, p) for p in packets]


@pytest.mark.parametrize("kind", ["ethernet", "vlan", "sll", "sll2", "null", "loop", "raw"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_link_types_and_reassembly(kind, v6):
    data = FIXTURES["tls_curl_sni"].data
    frames = conversation(data, v6, [5, 200, 300], kind)
    for blob in (classic(frames), classic(frames, ">", nano=True), pcapng(frames), pcapng(frames, ">"),
                 pcapng(frames, simple=True)):
        flow = pcap.first_client_payload(blob)
        assert flow.data == data
        assert flow.client == (CLIENT6 if v6 else CLIENT4) and flow.server == (SERVER6 if v6 else SERVER4)
        assert flow.steps == [5, 200, len(data)]   # the retransmission adds nothing; the swapped pair lands at once
        assert flow.client_closed and not flow.gap


def test_capture_edge_cases(tmp_path):
    data = FIXTURES["http_curl_get"].data
    # no SYN in the capture: the first packet with payload names the client
    frames = [f for f in conversation(data, False, [10], "raw", shuffle=False)
              if pcap.tcp_segment(*f) is None or not pcap.tcp_segment(*f).flags & 0x02]
    flow = pcap.first_client_payload(classic(frames))
    assert flow.client == SERVER4 and flow.data == b"SSH-2.0-server\r\n"      # the server spoke first here
    # a missing segment: reading stops at the gap
    frames = conversation(data, True, [10, 20], "ethernet", shuffle=False)
    del frames[5]                                   # the second piece
    flow = pcap.first_client_payload(pcapng(frames))
    assert flow.data == data[:10] and flow.gap
    # hop-by-hop options in IPv6 are walked
    seg = tcp(CLIENT6, SERVER6, 1, 0x18, b"SSH-2.0-x\r\n")
    flow = pcap.first_client_payload(classic([link("raw", ipv6(CLIENT6, SERVER6, seg, hop_by_hop=True))]))
    assert flow.data == b"SSH-2.0-x\r\n"
    # the limit caps the payload
    assert len(pcap.first_client_payload(classic(conversation(data, False, [10], "raw")), limit=30).data) == 30
    for bad in (b"\xd4\xc3\xb2\xa1" + bytes(4), classic([link("raw", ipv4(CLIENT4, SERVER4, b"x" * 20))])):
        with pytest.raises(pcap.CaptureError):
            pcap.first_client_payload(bad)
    assert not pcap.is_capture(data)


def test_explain_replays_packets_and_reads_proxy_headers(tmp_path):
    """A pcap is replayed packet by packet; a PROXY header in the capture is read like the daemon reads it."""
    conf = tmp_path / "e.conf"
    conf.write_text("""
[global]
on_timeout = ssh
[listen]
  [[edge]]
  address = 0.0.0.0:443
  [[behind]]
  address = 127.0.0.1:8443
  proxy_protocol = v1
  trusted = 10.0.0.0/8
[routes]
  [[ssh]]
  probe = ssh
  backend = 127.0.0.1:22
  [[web]]
  probe = http
  backend = 127.0.0.1:80
  send_proxy = v1
""")
    cfg = config.load_file(str(conf))
    request = FIXTURES["http_curl_get"].data
    pcap_path = tmp_path / "c.pcap"
    pcap_path.write_bytes(classic(conversation(request, False, [2, 4], "sll")))
    text = explain.explain(cfg, explain.load(str(pcap_path), 16384))
    assert "pcap (Linux cooked), 95 bytes in 3 steps" in text
    assert "connection 10.1.2.3:40001 -> 10.9.8.7:443, then the client closed" in text
    edge = text.split("listener edge")[1].split("listener behind")[0]
    assert "chosen: route web (match after 4 bytes)" in edge     # "GET " decides: the daemon needs no more
    assert "text: PROXY TCP4 10.1.2.3 10.9.8.7 40001 443" in edge
    behind = text.split("listener behind")[1]
    assert "chosen: none, close (proxy-invalid)" in behind                   # 10.1.2.3 is trusted: a header is due
    header = b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 443\r\n"
    raw = tmp_path / "p.bin"
    raw.write_bytes(header + request)
    text = explain.explain(cfg, explain.load(str(raw), 16384))
    behind = text.split("listener behind")[1]
    assert "PROXY header in: v1 PROXY 192.0.2.9:5555 -> 198.51.100.1:443" in behind
    assert "chosen: route web (match after 95 bytes)" in behind
    assert "text: PROXY TCP4 192.0.2.9 198.51.100.1 5555 443" in behind
    edge = text.split("listener edge")[1].split("listener behind")[0]
    assert "chosen: none, close (no-route" in edge                           # a PROXY line is no protocol here
    (tmp_path / "empty.bin").write_bytes(b"")
    code, out, err = run_explain(conf, [tmp_path / "empty.bin", tmp_path / "missing.bin", raw])
    assert code == 1 and "empty.bin: empty file" in err and "missing.bin: No such file" in err
    assert "chosen: route web" in out
