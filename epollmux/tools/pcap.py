"""Sans-I/O reader of packet captures: the first TCP connection's client payload, as the server received it,
and the first datagrams of each UDP flow.

Owns: classic pcap (microsecond and nanosecond, either byte order) and pcapng (section, interface, enhanced,
simple and obsolete packet blocks), the link types Ethernet (with 802.1Q/802.1ad tags), Linux cooked v1
and v2, BSD loopback (NULL, LOOP) and raw IP; IPv4 (fragments skipped) and IPv6 (extension headers walked,
fragments skipped); TCP and UDP. It takes bytes and returns a value; CaptureError says why a file cannot be used.
Must not import sockets, the reactor or the configuration.

The connection is the first one whose SYN (without ACK) is in the capture; without a SYN, the first TCP
packet with payload names the client. Its client-to-server payload is reassembled by sequence number
(retransmissions and overlaps dropped, out-of-order segments placed, reading stops at a gap), and `steps`
records how long the in-order prefix was after each packet that grew it: what a server could have
peeked, packet by packet.

A UDP flow is keyed by its client address and port (as the daemon's flow table is): the first datagram of
an address pair names the client, and datagrams the other way are its replies.  Each flow keeps its first
MAX_FLOW_DATAGRAMS client datagrams in capture order.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",        # microseconds
               b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}        # nanoseconds
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"

LINK_NULL, LINK_ETHERNET, LINK_RAW, LINK_LOOP, LINK_SLL, LINK_SLL2 = 0, 1, 101, 108, 113, 276
LINK_RAW_ALIASES = {12, 14, 101}            # DLT_RAW differs between platforms; LINKTYPE_RAW is 101
LINK_IPV4, LINK_IPV6 = 228, 229
LINK_NAMES = {LINK_NULL: "BSD loopback", LINK_ETHERNET: "Ethernet", LINK_LOOP: "OpenBSD loopback",
              LINK_SLL: "Linux cooked", LINK_SLL2: "Linux cooked v2", LINK_IPV4: "raw IPv4", LINK_IPV6: "raw IPv6",
              12: "raw IP", 14: "raw IP", 101: "raw IP"}
ETH_IPV4, ETH_IPV6, ETH_VLAN_TAGS = 0x0800, 0x86DD, (0x8100, 0x88A8, 0x9100)
AF_INET6_VALUES = {10, 24, 28, 30}          # Linux, BSDs, FreeBSD, Darwin
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
IPV6_EXTENSIONS = {0, 43, 60}               # hop-by-hop, routing, destination options: (len + 1) * 8
IPV6_FRAGMENT, IPV6_AH, PROTO_TCP, PROTO_UDP = 44, 51, 6, 17
MAX_PAYLOAD = 1 << 20
MAX_FLOW_DATAGRAMS = 8
MAX_FLOWS = 1000


class CaptureError(ValueError):
    """The bytes are not a capture this module reads, or hold no usable TCP payload."""


@dataclass
class Flow:
    client: tuple[str, int]
    server: tuple[str, int]
    data: bytes = b""                                   # the in-order client payload (capped by `limit`)
    steps: list[int] = field(default_factory=list)      # prefix lengths after each packet that grew it
    client_closed: bool = False                         # a FIN or RST from the client came after `data`
    gap: bool = False                                   # a missing segment stopped the reassembly
    link: str = ""
    packets: int = 0


@dataclass(frozen=True)
class Segment:
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    flags: int
    payload: bytes


@dataclass
class UdpFlow:
    client: tuple[str, int]
    server: tuple[str, int]
    datagrams: list[bytes] = field(default_factory=list)   # the client's first datagrams, in capture order
    replies: int = 0                                        # datagrams from the server seen (not kept)
    link: str = ""


def is_capture(data: bytes) -> bool:
    return data[:4] in PCAP_MAGICS or data[:4] == PCAPNG_SHB


def first_client_payload(data: bytes, limit: int = 1 << 16) -> Flow:
    """The first connection's client payload (at most `limit` bytes), with the steps it arrived in."""
    flow, segments, link = None, [], set()
    count = 0
    for linktype, frame in frames(data):
        count += 1
        segment = tcp_segment(linktype, frame)
        if segment is None:
            continue
        link.add(LINK_NAMES.get(linktype, str(linktype)))
        segments.append(segment)
    syn = next((s for s in segments if s.flags & TCP_SYN and not s.flags & TCP_ACK), None)
    if syn is not None:
        client, server, isn = syn.src, syn.dst, (syn.seq + 1) & 0xFFFFFFFF
    else:
        first = next((s for s in segments if s.payload), None)
        if first is None:
            raise CaptureError(f"no TCP payload in {count} packets")
        client, server, isn = first.src, first.dst, first.seq
    flow = Flow(client, server, link=", ".join(sorted(link)), packets=count)
    _reassemble(flow, [s for s in segments if s.src == client and s.dst == server], isn, min(limit, MAX_PAYLOAD))
    if not flow.data:
        raise CaptureError(f"the connection {_text(client)} -> {_text(server)} carries no client payload")
    return flow


def udp_flows(data: bytes) -> list[UdpFlow]:
    """The UDP flows of a capture (at most MAX_FLOWS), in the order their first datagram came."""
    flows: dict[tuple, UdpFlow] = {}
    for linktype, frame in frames(data):
        parsed = _transport(linktype, frame, PROTO_UDP)
        if parsed is None or len(parsed[2]) < 8:
            continue
        src_ip, dst_ip, udp = parsed
        sport, dport, length = struct.unpack_from("!HHH", udp, 0)
        src, dst = (src_ip, sport), (dst_ip, dport)
        payload = bytes(udp[8:length]) if 8 <= length <= len(udp) else bytes(udp[8:])
        reply = flows.get((dst, src))
        if reply is not None:
            reply.replies += 1
            continue
        flow = flows.get((src, dst))
        if flow is None:
            if len(flows) >= MAX_FLOWS:
                continue
            flow = flows[(src, dst)] = UdpFlow(src, dst, link=LINK_NAMES.get(linktype, str(linktype)))
        if len(flow.datagrams) < MAX_FLOW_DATAGRAMS:
            flow.datagrams.append(payload)
    return list(flows.values())


def _reassemble(flow: Flow, segments: list[Segment], isn: int, limit: int) -> None:
    pieces: dict[int, bytes] = {}       # offset from isn -> payload
    have = b""
    for seg in segments:
        if have and seg.flags & (TCP_FIN | TCP_RST) and not seg.payload:
            flow.client_closed = True
        if not seg.payload or len(have) >= limit:
            continue
        offset = (seg.seq - isn) & 0xFFFFFFFF
        if offset >= 1 << 31:           # starts before isn (a capture begun mid-stream): keep what is new
            skip = (1 << 32) - offset
            if skip >= len(seg.payload):
                continue
            offset, payload = 0, seg.payload[skip:]
        else:
            payload = seg.payload
        if offset > len(have) + MAX_PAYLOAD:
            continue
        if len(payload) > len(pieces.get(offset, b"")):
            pieces[offset] = payload
        grown = have
        while True:
            best = b""
            for start, piece in pieces.items():
                if start <= len(grown) < start + len(piece):
                    tail = piece[len(grown) - start:]
                    best = tail if len(tail) > len(best) else best
            if not best:
                break
            grown += best
        if len(grown) > len(have):
            have = grown[:limit]
            flow.steps.append(len(have))
        if seg.flags & (TCP_FIN | TCP_RST):
            flow.client_closed = True
    flow.data = have
    flow.gap = any(start > len(have) for start in pieces) and len(have) < limit


def _text(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- containers ------------------------------------------------------------------------------------
def frames(data: bytes):
    """(link type, frame bytes) for every packet of a pcap or pcapng capture."""
    if data[:4] in PCAP_MAGICS:
        yield from _pcap(data)
    elif data[:4] == PCAPNG_SHB:
        yield from _pcapng(data)
    else:
        raise CaptureError("not a pcap or pcapng capture")


def _pcap(data: bytes):
    order = PCAP_MAGICS[data[:4]]
    if len(data) < 24:
        raise CaptureError("pcap: truncated file header")
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF    # upper bits: FCS length
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        pos += 16
        if caplen > len(data) - pos:
            return                      # a capture cut off mid-packet: what came before stands
        yield linktype, data[pos:pos + caplen]
        pos += caplen


def _pcapng(data: bytes):
    pos, order, interfaces = 0, "<", []
    while pos + 12 <= len(data):
        if data[pos:pos + 4] == PCAPNG_SHB:
            magic = data[pos + 8:pos + 12]
            order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(magic)
            if order is None:
                raise CaptureError("pcapng: bad byte-order magic")
            interfaces = []
        btype, length = struct.unpack_from(order + "II", data, pos)
        if length < 12 or length % 4 or pos + length > len(data):
            return
        body = data[pos + 8:pos + length - 4]
        if btype == 1 and len(body) >= 8:                       # interface description
            linktype, _, snaplen = struct.unpack_from(order + "HHI", body, 0)
            interfaces.append((linktype, snaplen))
        elif btype == 6 and len(body) >= 20:                    # enhanced packet
            iface, _, _, caplen = struct.unpack_from(order + "IIII", body, 0)
            if iface < len(interfaces):
                yield interfaces[iface][0], body[20:20 + caplen]
        elif btype == 3 and len(body) >= 4 and interfaces:      # simple packet: interface 0
            origlen = struct.unpack_from(order + "I", body, 0)[0]
            linktype, snaplen = interfaces[0]
            yield linktype, body[4:4 + min(origlen, snaplen or origlen, len(body) - 4)]
        elif btype == 2 and len(body) >= 20:                    # obsolete packet block
            iface = struct.unpack_from(order + "H", body, 0)[0]
            caplen = struct.unpack_from(order + "I", body, 12)[0]
            if iface < len(interfaces):
                yield interfaces[iface][0], body[20:20 + caplen]
        pos += length


# --- link, network, transport ----------------------------------------------------------------------
def tcp_segment(linktype: int, frame: bytes) -> Segment | None:
    """The TCP segment in one frame, or None (not IP, not TCP, a fragment, truncated headers)."""
    parsed = _transport(linktype, frame, PROTO_TCP)
    if parsed is None:
        return None
    src, dst, tcp = parsed
    if len(tcp) < 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
    offset = (tcp[12] >> 4) * 4
    if offset < 20 or offset > len(tcp):
        return None
    return Segment((src, sport), (dst, dport), seq, tcp[13], bytes(tcp[offset:]))


def _transport(linktype: int, frame: bytes, proto: int):
    """(source IP, destination IP, transport bytes) of a frame carrying `proto`, else None."""
    packet = _network(linktype, frame)
    if packet is None:
        return None
    version, ip = packet
    return _ipv4(ip, proto) if version == 4 else _ipv6(ip, proto)


def _network(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    if linktype == LINK_ETHERNET:
        if len(frame) < 14:
            return None
        pos, ethertype = 12, struct.unpack_from("!H", frame, 12)[0]
        while ethertype in ETH_VLAN_TAGS and len(frame) >= pos + 6:
            pos += 4
            ethertype = struct.unpack_from("!H", frame, pos)[0]
        return _by_ethertype(ethertype, frame[pos + 2:])
    if linktype == LINK_SLL and len(frame) >= 16:
        return _by_ethertype(struct.unpack_from("!H", frame, 14)[0], frame[16:])
    if linktype == LINK_SLL2 and len(frame) >= 20:
        return _by_ethertype(struct.unpack_from("!H", frame, 0)[0], frame[20:])
    if linktype in (LINK_NULL, LINK_LOOP) and len(frame) >= 4:
        families = {struct.unpack_from("<I", frame, 0)[0], struct.unpack_from(">I", frame, 0)[0]}
        if 2 in families:
            return 4, frame[4:]
        if families & AF_INET6_VALUES:
            return 6, frame[4:]
        return None
    if linktype in LINK_RAW_ALIASES or linktype in (LINK_IPV4, LINK_IPV6):
        return (frame[0] >> 4, frame) if frame and frame[0] >> 4 in (4, 6) else None
    return None


def _by_ethertype(ethertype: int, payload: bytes) -> tuple[int, bytes] | None:
    if ethertype == ETH_IPV4:
        return 4, payload
    if ethertype == ETH_IPV6:
        return 6, payload
    return None


def _ipv4(ip: bytes, proto: int):
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    header = (ip[0] & 0x0F) * 4
    total, frag = struct.unpack_from("!H2xH", ip, 2)
    if ip[9] != proto or frag & 0x3FFF or header < 20 or len(ip) < header:
        return None                     # not `proto`, or a fragment (MF set or an offset)
    end = min(total, len(ip)) if total >= header else len(ip)     # Ethernet padding is not payload
    return str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20])), ip[header:end]


def _ipv6(ip: bytes, proto: int):
    if len(ip) < 40 or ip[0] >> 4 != 6:
        return None
    length = struct.unpack_from("!H", ip, 4)[0]
    nxt, pos = ip[6], 40
    end = min(40 + length, len(ip)) if length else len(ip)         # 0: a jumbogram; take what is there
    for _ in range(8):
        if nxt == proto:
            return (str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40])), ip[pos:end])
        if nxt in IPV6_EXTENSIONS and pos + 2 <= end:
            nxt, pos = ip[pos], pos + (ip[pos + 1] + 1) * 8
        elif nxt == IPV6_AH and pos + 2 <= end:
            nxt, pos = ip[pos], pos + (ip[pos + 1] + 2) * 4
        else:
            return None                 # a fragment, or something else
    return None
