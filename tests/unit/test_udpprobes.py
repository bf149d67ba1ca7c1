"""UDP probes over a flow's first datagrams, the UDP decision, and QUIC Initial decryption (RFC 9001
Appendix A vectors, recorded first datagrams in tests/fixtures/udp/, bad input)."""

from __future__ import annotations

import pytest

from epollmux.wire import quic, udpsniff
from epollmux.wire.probes import Verdict
from epollmux.wire.udpprobes import UDP_PROBES, prepare_udp_options
from support.udp_fixtures import UDP_FIXTURES, UdpFixture, crypto_frame, seal_initial

RFC9001_DCID = bytes.fromhex("8394c8f03e515708")


def verdict(probe: str, datagrams: tuple[bytes, ...], **raw) -> Verdict:
    return UDP_PROBES[probe].func(datagrams, prepare_udp_options(probe, raw))


# ----------------------------------------------------------------------------- interface
def test_the_table_names_the_udp_probes():
    assert sorted(UDP_PROBES) == sorted(["openvpn", "wireguard", "dtls", "quic", "teamspeak", "regex", "any"])
    assert UDP_PROBES["quic"].keys == UDP_PROBES["dtls"].keys == {"sni", "alpn"}
    assert UDP_PROBES["regex"].keys == {"regex"}


def test_transport_sets():
    assert "tls" in udpsniff.TCP_ONLY and "ssh" in udpsniff.TCP_ONLY
    assert {"quic", "dtls", "wireguard", "teamspeak"} == udpsniff.UDP_ONLY
    assert not {"openvpn", "regex", "any"} & (udpsniff.TCP_ONLY | udpsniff.UDP_ONLY)
    assert udpsniff.probe_fits("quic", udp=True) and not udpsniff.probe_fits("quic", udp=False)
    assert udpsniff.probe_fits("tls", udp=False) and not udpsniff.probe_fits("tls", udp=True)


@pytest.mark.parametrize("probe, raw, key", [
    ("nosuch", {}, "probe"),
    ("tls", {}, "probe"),
    ("wireguard", {"sni": "x"}, "sni"),
    ("regex", {}, "regex"),
    ("regex", {"regex": "("}, "regex"),
    ("regex", {"regex": "a", "min_length": 3}, "min_length"),
    ("quic", {"host": "x"}, "host"),
    ("quic", {"sni": []}, "sni"),
])
def test_bad_options_name_their_key(probe, raw, key):
    with pytest.raises(ValueError) as err:
        prepare_udp_options(probe, raw)
    assert err.value.args[0] == key


def test_options_follow_the_tcp_rules():
    assert prepare_udp_options("quic", {"sni": "*.Example.ORG", "alpn": ["h3"]}) == \
        {"sni": ["*.example.org"], "alpn": ["h3"]}
    assert prepare_udp_options("wireguard", {}) == {}


@pytest.mark.parametrize("probe", sorted(UDP_PROBES))
def test_no_datagram_yet_is_again_except_any(probe):
    raw = {"regex": "x"} if probe == "regex" else {}
    assert verdict(probe, (), **raw) is (Verdict.MATCH if probe == "any" else Verdict.AGAIN)


# ----------------------------------------------------------------------------- simple probes
WG = b"\x01\x00\x00\x00" + bytes(range(144))


def test_wireguard_initiation():
    assert verdict("wireguard", (WG,)) is Verdict.MATCH
    assert verdict("wireguard", (WG[:-1],)) is Verdict.NEXT
    assert verdict("wireguard", (WG + b"\0",)) is Verdict.NEXT
    assert verdict("wireguard", (b"\x01\x00\x01\x00" + WG[4:],)) is Verdict.NEXT
    assert verdict("wireguard", (b"\x02" + WG[1:],)) is Verdict.NEXT


def test_teamspeak_init():
    assert verdict("teamspeak", (b"TS3INIT1",)) is Verdict.MATCH
    assert verdict("teamspeak", (b"TS3INIT1\x00\x65\x88\x06\x02",)) is Verdict.MATCH
    assert verdict("teamspeak", (b"TS3INIT1x",)) is Verdict.NEXT
    assert verdict("teamspeak", (b"TS3INIT",)) is Verdict.NEXT


def test_regex_searches_the_first_datagram():
    assert verdict("regex", (b"xx hello", b"zz"), regex=["hel+o"]) is Verdict.MATCH
    assert verdict("regex", (b"zz", b"hello"), regex=["hel+o"]) is Verdict.NEXT


def openvpn_reset(opcode: int = 7, hmac: int | None = None, pid: int = 1) -> bytes:
    head = bytes([opcode << 3]) + b"S" * 8
    if hmac is not None:
        head += b"H" * hmac + pid.to_bytes(4, "big") + b"TIME"
    return head + b"\x00" + bytes(4)


@pytest.mark.parametrize("hmac", [None, 16, 20, 32, 64])
@pytest.mark.parametrize("opcode", [7, 10])
def test_openvpn_hard_resets(opcode, hmac):
    assert verdict("openvpn", (openvpn_reset(opcode, hmac),)) is Verdict.MATCH


def test_openvpn_refuses():
    assert verdict("openvpn", (bytes([7 << 3 | 1]) + openvpn_reset()[1:],)) is Verdict.NEXT     # key id 1
    assert verdict("openvpn", (bytes([1 << 3]) + openvpn_reset()[1:],)) is Verdict.NEXT         # V1
    assert verdict("openvpn", (openvpn_reset()[:13],)) is Verdict.NEXT
    assert verdict("openvpn", (openvpn_reset(hmac=20, pid=0),)) is Verdict.NEXT
    assert verdict("openvpn", (openvpn_reset(hmac=20, pid=70000),)) is Verdict.NEXT
    assert verdict("openvpn", (b"",)) is Verdict.NEXT


# ----------------------------------------------------------------------------- QUIC, RFC 9001 Appendix A
def test_rfc9001_initial_keys():
    key, iv, hp = quic.initial_keys(RFC9001_DCID, quic.VERSION_1)
    assert (key.hex(), iv.hex(), hp.hex()) == (
        "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2")


def test_rfc9001_client_initial_decrypts_to_its_client_hello():
    packet = UDP_FIXTURES["quic_rfc9001_a2"].datagrams[0]
    assert len(packet) == 1200 and quic.is_initial(packet)
    hello = quic.client_hello((packet,))
    assert hello.status.value == "ok" and hello.sni == "example.com" and hello.alpn == ("alpn",)
    assert verdict("quic", (packet,), sni="example.com") is Verdict.MATCH
    assert verdict("quic", (packet,), sni="*.com", alpn="alpn") is Verdict.MATCH
    assert verdict("quic", (packet,), sni="other.org") is Verdict.NEXT
    assert verdict("quic", (packet,), alpn="h3") is Verdict.NEXT
    assert verdict("quic", (packet,)) is Verdict.MATCH


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def test_quic_bad_input_is_next_never_a_raise():
    packet = UDP_FIXTURES["quic_rfc9001_a2"].datagrams[0]
    bad = {
        "flipped tag": flipped(packet, len(packet) - 1),
        "flipped payload": flipped(packet, 600),
        "version negotiation": packet[:1] + bytes(4) + packet[5:],
        "unknown version": packet[:1] + b"\xff\x00\x00\x1d" + packet[5:],
        "short header": b"\x40" + packet[1:],
        "truncated": packet[:1100],
        "garbage": bytes(range(256)) * 5,
        "empty": b"",
    }
    for name, datagram in bad.items():
        assert verdict("quic", (datagram,), sni="example.com") is Verdict.NEXT, name
        assert udpsniff.flow_names((datagram,)) is udpsniff.NO_NAMES, name


# ----------------------------------------------------------------------------- recorded fixtures
@pytest.mark.parametrize("fixture", UDP_FIXTURES.values(), ids=lambda f: f.name)
def test_recorded_first_datagrams_route_to_their_probe(fixture: UdpFixture):
    data = fixture.datagrams
    routes = [(p, prepare_udp_options(p, {})) for p in ("wireguard", "teamspeak", "openvpn", "dtls", "quic")]
    decision = udpsniff.decide_flow(data, routes, full=True)
    assert decision.done and routes[decision.route][0] == fixture.probe
    names = udpsniff.flow_names(data)
    assert (names.sni, names.alpn) == (fixture.sni, fixture.alpn)
    if fixture.sni:
        named = [(fixture.probe, prepare_udp_options(fixture.probe, {"sni": "nomatch.invalid"})),
                 (fixture.probe, prepare_udp_options(fixture.probe, {"sni": fixture.sni}))]
        assert udpsniff.decide_flow(data, named, full=True).route == 1


def test_decide_flow_strict_order():
    wg = (WG,)
    routes = [("quic", prepare_udp_options("quic", {"sni": "x"})), ("wireguard", {}), ("any", {})]
    assert udpsniff.decide_flow(wg, routes) == udpsniff.Decision(1, True, (Verdict.NEXT, Verdict.MATCH))
    assert udpsniff.decide_flow((), routes) == udpsniff.Decision(None, False, (Verdict.AGAIN,))
    assert udpsniff.decide_flow((), routes, full=True).route == 2


def test_rfc9369_v2_initial_keys_and_packet():
    key, iv, hp = quic.initial_keys(RFC9001_DCID, quic.VERSION_2)
    assert (key.hex(), iv.hex(), hp.hex()) == (
        "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9")
    packet = UDP_FIXTURES["quic_rfc9369_a2"].datagrams[0]
    assert quic.client_hello((packet,)).sni == "example.com"
    # a v2 Initial has type bits 01: the same first byte under version 1 is a 0-RTT packet, not an Initial
    v1_header = packet[:1] + b"\x00\x00\x00\x01" + packet[5:]
    assert not quic.is_initial(v1_header)


@pytest.mark.parametrize("name, probe, count", [
    ("quic_aioquic_v1_split", "quic", 2), ("dtls_openssl_fragmented", "dtls", 3)])
def test_a_hello_over_several_datagrams_waits_for_them(name, probe, count):
    data = UDP_FIXTURES[name].datagrams
    assert len(data) == count
    route = [(probe, prepare_udp_options(probe, {"sni": "www.example.org"}))]
    for n in range(1, count):
        assert udpsniff.decide_flow(data[:n], route) == udpsniff.Decision(None, False, (Verdict.AGAIN,))
        assert udpsniff.decide_flow(data[:n], route, full=True).route is None
        assert udpsniff.flow_names(data[:n]) is udpsniff.NO_NAMES
    assert udpsniff.decide_flow(data, route).route == 0
    # later datagrams may arrive first: the stream is collected by offset
    if probe == "quic":
        assert udpsniff.decide_flow(data[::-1], route).route == 0


def test_quic_without_names_is_the_header_shape_only():
    v1 = UDP_FIXTURES["quic_aioquic_v1"].datagrams[0]
    tag_end = quic.LongHeader(v1, 0).end         # aioquic pads the datagram with zeros after its packets
    assert verdict("quic", (flipped(v1, tag_end - 1),)) is Verdict.MATCH       # not decrypted
    assert verdict("quic", (v1[:1199],)) is Verdict.NEXT                         # under 1200 bytes
    assert verdict("quic", (flipped(v1, tag_end - 1),), sni="*") is Verdict.NEXT
    assert verdict("quic", (flipped(v1, len(v1) - 1),), sni="*") is Verdict.MATCH   # padding is not read


def test_quic_gives_up_after_a_few_datagrams():
    first = UDP_FIXTURES["quic_aioquic_v1_split"].datagrams[0]
    route = [("quic", prepare_udp_options("quic", {"sni": "*"}))]
    assert udpsniff.decide_flow((first,) * (quic.MAX_DATAGRAMS - 1), route).done is False
    assert udpsniff.decide_flow((first,) * quic.MAX_DATAGRAMS, route) == \
        udpsniff.Decision(None, True, (Verdict.NEXT,))


# ----------------------------------------------------------------------------- built Initials (edge cases)
def hello_of(fixture: str) -> bytes:
    """The bare ClientHello inside a recorded Initial (decrypted by the module under test, then re-sealed)."""
    datagram = UDP_FIXTURES[fixture].datagrams[0]
    h = quic.LongHeader(datagram, 0)
    pieces = quic.crypto_frames(quic._opener(h.dcid, h.version).open(datagram, h))
    return b"".join(data for _, data in sorted(pieces))


DCID = bytes(range(8))


def test_built_initials_coalesced_out_of_order_with_ack_and_ping():
    hello = hello_of("quic_rfc9001_a2")
    half = len(hello) // 2
    second = seal_initial(DCID, 1, b"\x01" + b"\x02\x00\x00\x00\x00" + crypto_frame(half, hello[half:]))
    first = seal_initial(DCID, 0, crypto_frame(0, hello[:half]), pad_to=1200 - len(second))
    datagram = first + second
    assert len(datagram) >= 1200
    assert quic.client_hello((datagram,)).sni == "example.com"
    swapped = seal_initial(DCID, 0, crypto_frame(half, hello[half:]), pad_to=1200)
    assert quic.client_hello((swapped, seal_initial(DCID, 1, crypto_frame(0, hello[:half]), pad_to=1200))).sni \
        == "example.com"


def test_a_frame_an_initial_may_not_carry_is_next():
    hello = hello_of("quic_rfc9001_a2")
    stream_frame = b"\x08\x00\x01x"
    datagram = seal_initial(DCID, 0, crypto_frame(0, hello) + stream_frame, pad_to=1200)
    assert verdict("quic", (datagram,), sni="*") is Verdict.NEXT


def test_many_tiny_initials_are_bounded():
    hello = hello_of("quic_rfc9001_a2")
    step = 20
    packets = [seal_initial(DCID, i, crypto_frame(off, hello[off:off + step]))
               for i, off in enumerate(range(0, len(hello), step))]
    assert len(packets) > quic.MAX_INITIALS
    datagram = b"".join(packets)
    datagram += seal_initial(DCID, 99, b"", pad_to=max(0, 1200 - len(datagram))) if len(datagram) < 1200 else b""
    result = quic.client_hello((datagram,))
    assert result.status.value == "invalid" and "more than" in result.reason
