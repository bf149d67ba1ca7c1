"""UDP probes: pure functions of the first datagrams of one flow, and the one table that names them.

Owns: every UDP probe's rule, the UDP_PROBES registry (probe name -> function + accepted route option keys)
and prepare_udp_options().  A probe sees `datagrams`, the flow's first datagrams in arrival order (the
caller keeps a few; README "UDP probes").  Verdicts and option conventions are those of wire.probes:
MATCH, NEXT, or AGAIN (wait for another datagram; the caller turns it into NEXT once it stops waiting).
Every probe but `any` says AGAIN on an empty tuple.  A datagram is whole when it arrives, so unlike TCP
most rules decide on the first datagram; only `dtls` and `quic` with names may need a second one (a
ClientHello spread over several datagrams).  No probe raises on any input.

Must not import: socket, select, the reactor, connection or config modules.  No I/O, no state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from epollmux.wire import dtls, quic
from epollmux.wire.probes import ProbeSpec, Verdict, hello_verdict, prepare_options

Datagrams = tuple[bytes, ...]


def probe_any(datagrams: Datagrams, opts: Mapping[str, object]) -> Verdict:
    """Always MATCH, even before any datagram."""
    return Verdict.MATCH


# ---------------------------------------------------------------- regex
def probe_regex(datagrams: Datagrams, opts: Mapping[str, object]) -> Verdict:
    """sslh: unanchored search of every pattern over the first datagram; MATCH if one matches, else NEXT.
    (A datagram never grows, so there is no `min_length`.)"""
    if not datagrams:
        return Verdict.AGAIN
    patterns: Sequence[re.Pattern[bytes]] = opts.get("regex", ())
    return Verdict.MATCH if any(p.search(datagrams[0]) for p in patterns) else Verdict.NEXT


# ---------------------------------------------------------------- wireguard
WIREGUARD_INITIATION = b"\x01\x00\x00\x00"      # message type 1, three reserved zero bytes
WIREGUARD_INITIATION_LEN = 148


def probe_wireguard(datagrams: Datagrams, opts: Mapping[str, object]) -> Verdict:
    """A WireGuard handshake initiation: exactly 148 bytes starting 01 00 00 00 (sslh's rule)."""
    if not datagrams:
        return Verdict.AGAIN
    first = datagrams[0]
    return Verdict.MATCH if len(first) == WIREGUARD_INITIATION_LEN and first[:4] == WIREGUARD_INITIATION \
        else Verdict.NEXT


# ---------------------------------------------------------------- teamspeak
TEAMSPEAK_INIT = b"TS3INIT1"


def probe_teamspeak(datagrams: Datagrams, opts: Mapping[str, object]) -> Verdict:
    """sslh's rule: the datagram starts with `TS3INIT1` and is exactly that or a zero byte follows (the
    high byte of the init packet id 0x0065)."""
    if not datagrams:
        return Verdict.AGAIN
    first = datagrams[0]
    ok = first[:8] == TEAMSPEAK_INIT and (len(first) == 8 or first[8] == 0)
    return Verdict.MATCH if ok else Verdict.NEXT


# ---------------------------------------------------------------- openvpn
OPENVPN_RESET_OPCODES = frozenset((7, 10))      # P_CONTROL_HARD_RESET_CLIENT_V2, _V3 (tls-crypt-v2)
OPENVPN_HMAC_SIZES = (16, 20, 32, 64)           # tls-auth digests: MD5, SHA1, SHA256, SHA512
OPENVPN_TLS_CRYPT_TAG = 32                      # tls-crypt: HMAC-SHA256 tag, then ciphertext
OPENVPN_EARLY_NEG = 0x0F                        # a 2.6 client's packet id high byte: "I do early negotiation"
OPENVPN_MAX_DATAGRAM = 2048                     # a tls-crypt-v2 reset carries a wrapped key (<= 1024 B)
_FOUR_ZEROS = bytes(4)


def probe_openvpn(datagrams: Datagrams, opts: Mapping[str, object]) -> Verdict:
    """A client hard reset over UDP: opcode 7 (V2) or 10 (V3, tls-crypt-v2) with key id 0, the datagram at
    most OPENVPN_MAX_DATAGRAM bytes, then after the 8-byte session id one of these layouts:

    - plain: ack count 0 and message packet id 0 (offsets 9 and 10..13);
    - tls-auth with an HMAC of 16, 20, 32 or 64 bytes: replay packet id in 1..255 (its high byte may be
      0x0f, OpenVPN 2.6's early-negotiation mark), 4 bytes of time, then ack count 0 and message packet id 0;
    - tls-crypt / tls-crypt-v2: replay packet id as for tls-auth, 4 bytes of time, and at least a 32-byte tag plus
      5 bytes (the encrypted ack count and packet id).  The tag and the ciphertext are not checked (that
      needs the key), so this layout rests on the opcode, the packet id and the length only.
    The time field is never checked (clocks differ).  Opcode 1 (V1, long obsolete) is not accepted.
    """
    if not datagrams:
        return Verdict.AGAIN
    d = datagrams[0]
    if not d or d[0] >> 3 not in OPENVPN_RESET_OPCODES or d[0] & 7 or len(d) > OPENVPN_MAX_DATAGRAM:
        return Verdict.NEXT
    size = len(d)
    if size >= 14 and d[9] == 0 and d[10:14] == _FOUR_ZEROS:
        return Verdict.MATCH
    for hmac in OPENVPN_HMAC_SIZES:
        at = 9 + hmac
        if size >= at + 13 and _first_packet_id(d, at) \
                and d[at + 8] == 0 and d[at + 9:at + 13] == _FOUR_ZEROS:
            return Verdict.MATCH
    if size >= 17 + OPENVPN_TLS_CRYPT_TAG + 5 and _first_packet_id(d, 9):
        return Verdict.MATCH
    return Verdict.NEXT


def _first_packet_id(d: bytes, at: int) -> bool:
    """The replay packet id of a session's first packets: 1..255, its high byte 0 or OPENVPN_EARLY_NEG."""
    return d[at] in (0, OPENVPN_EARLY_NEG) and d[at + 1] == d[at + 2] == 0 and d[at + 3] != 0


# ---------------------------------------------------------------- dtls and quic
def probe_dtls(datagrams: Datagrams, opts: Mapping[str, object]) -> Verdict:
    """A DTLS 1.0/1.2/1.3 ClientHello (record type 22, record version 0xfeff or 0xfefd), reassembled from
    its handshake fragments across records and datagrams (at most dtls.MAX_DATAGRAMS); MATCH once it is
    whole and parsed OK and fits `sni` / `alpn` as the TCP tls probe's globs do."""
    if not datagrams:
        return Verdict.AGAIN
    return hello_verdict(dtls.client_hello(datagrams), opts)


def probe_quic(datagrams: Datagrams, opts: Mapping[str, object]) -> Verdict:
    """A QUIC v1 or v2 client Initial.  Without `sni`/`alpn`: the first datagram's shape only (quic.is_initial:
    long header, Initial type of its version, DCID of 8..20 bytes, datagram >= 1200 bytes).  With them: the
    Initials are decrypted (RFC 9001 §5) and the ClientHello in their CRYPTO frames is matched as the tls
    probe does; AGAIN while it is incomplete (at most quic.MAX_DATAGRAMS datagrams)."""
    if not datagrams:
        return Verdict.AGAIN
    if "sni" not in opts and "alpn" not in opts:
        return Verdict.MATCH if quic.is_initial(datagrams[0]) else Verdict.NEXT
    return hello_verdict(quic.client_hello(datagrams), opts)


# ---------------------------------------------------------------- registry
UDP_PROBES: dict[str, ProbeSpec] = {
    "openvpn": ProbeSpec(probe_openvpn, frozenset()),
    "wireguard": ProbeSpec(probe_wireguard, frozenset()),
    "dtls": ProbeSpec(probe_dtls, frozenset({"sni", "alpn"})),
    "quic": ProbeSpec(probe_quic, frozenset({"sni", "alpn"})),
    "teamspeak": ProbeSpec(probe_teamspeak, frozenset()),
    "regex": ProbeSpec(probe_regex, frozenset({"regex"})),
    "any": ProbeSpec(probe_any, frozenset()),
}


def prepare_udp_options(probe: str, raw: dict[str, object]) -> dict:
    """Turn a UDP route's raw probe options into what the probe takes; the error convention of
    probes.prepare_options: ValueError(key, message) for an unknown probe (key "probe"), a key the probe
    does not accept, a bad value, or a `regex` route without patterns."""
    spec = UDP_PROBES.get(probe)
    if spec is None:
        raise ValueError("probe", f"unknown UDP probe '{probe}'")
    for key in raw:
        if key not in spec.keys:
            raise ValueError(key, f"not an option of UDP probe '{probe}'")
    # The values follow the TCP rules: prepare them as the TCP probe with the same keys does.
    if probe in ("dtls", "quic"):
        return prepare_options("tls", raw)
    return prepare_options("regex", raw) if probe == "regex" else {}
