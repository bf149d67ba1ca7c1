"""The DTLS ClientHello of a flow's first datagrams (DTLS 1.0/1.2, RFC 6347; DTLS 1.3's ClientHello, RFC
9147, has the same plaintext framing).

Owns: DTLS record framing (13-byte header: type, version, epoch, sequence number, length), the 12-byte
handshake header (type, length, message_seq, fragment_offset, fragment_length), reassembly of the hello's
fragments across records and datagrams, and the mapping of a DTLS ClientHello body onto a TLS one (version
set to 0x0303, the cookie dropped) so clienthello.parse_handshake() reads SNI and ALPN.

Must not import: socket, select, the reactor, connection or config modules.  Pure; never raises.
"""

from __future__ import annotations

from epollmux.wire import fragments
from epollmux.wire.clienthello import MAX_HELLO_BYTES, HelloResult, HelloStatus, parse_handshake

CONTENT_HANDSHAKE = 22
VERSIONS = frozenset((0xFEFF, 0xFEFD))       # DTLS 1.0, DTLS 1.2 (also the legacy version of DTLS 1.3)
RECORD_HEADER = 13
HANDSHAKE_HEADER = 12
CLIENT_HELLO = 1
MAX_DATAGRAMS = 4


class _Bad(Exception):
    pass


class _NotDtls(Exception):
    pass


def client_hello(datagrams: tuple[bytes, ...]) -> HelloResult:
    """NOT_TLS unless the first record is a DTLS handshake record holding a ClientHello fragment; INVALID
    on inconsistent fragments or a bad hello; NEED_MORE while fragments are missing (INVALID after
    MAX_DATAGRAMS datagrams); OK with the hello's SNI and ALPN."""
    try:
        return _client_hello(datagrams[:MAX_DATAGRAMS])
    except _NotDtls as e:
        return HelloResult(HelloStatus.NOT_TLS, reason=str(e))
    except _Bad as e:
        return HelloResult(HelloStatus.INVALID, reason=str(e))
    except Exception as e:                  # never raise on any input
        return HelloResult(HelloStatus.INVALID, reason=f"unexpected {type(e).__name__}")


def _client_hello(datagrams: tuple[bytes, ...]) -> HelloResult:
    pieces: list[tuple[int, bytes]] = []
    total = seq = None
    for index, d in enumerate(datagrams):
        pos = 0
        while pos + RECORD_HEADER <= len(d):
            ctype, version = d[pos], int.from_bytes(d[pos + 1:pos + 3], "big")
            length = int.from_bytes(d[pos + 11:pos + 13], "big")
            body, pos = pos + RECORD_HEADER, pos + RECORD_HEADER + length
            if ctype != CONTENT_HANDSHAKE or version not in VERSIONS or d[body - 10:body - 8] != b"\0\0":
                if total is None:
                    raise _NotDtls("not a DTLS handshake record of epoch 0")
                break                                          # later records: not ours to read
            if pos > len(d):
                raise _Bad("record longer than the datagram")
            total, seq = _fragments(d[body:pos], pieces, total, seq)
        if index == 0 and total is None:
            raise _NotDtls("no DTLS record")
    hs = fragments.prefix(pieces)
    if total is None or len(hs) < total:
        if len(datagrams) >= MAX_DATAGRAMS:
            raise _Bad(f"ClientHello not whole in {MAX_DATAGRAMS} datagrams")
        return HelloResult(HelloStatus.NEED_MORE)
    return parse_handshake(_as_tls(hs[:total]))


def _fragments(rec: bytes, pieces: list, total: int | None, seq: int | None) -> tuple[int, int]:
    """Collect the ClientHello fragments of one record's payload; returns (hello length, message_seq)."""
    pos = 0
    while pos + HANDSHAKE_HEADER <= len(rec):
        kind = rec[pos]
        length = int.from_bytes(rec[pos + 1:pos + 4], "big")
        mseq = int.from_bytes(rec[pos + 4:pos + 6], "big")
        off = int.from_bytes(rec[pos + 6:pos + 9], "big")
        flen = int.from_bytes(rec[pos + 9:pos + 12], "big")
        start, pos = pos + HANDSHAKE_HEADER, pos + HANDSHAKE_HEADER + flen
        if kind != CLIENT_HELLO:
            if total is None:
                raise _NotDtls(f"handshake type {kind} is not ClientHello")
            continue
        if pos > len(rec) or off + flen > length:
            raise _Bad("handshake fragment overruns its record or message")
        if length + 4 > MAX_HELLO_BYTES:
            raise _Bad(f"ClientHello of {length} bytes exceeds the cap")
        if total is None:
            total, seq = length, mseq
        elif length != total:
            raise _Bad("ClientHello fragments disagree on its length")
        if mseq == seq:
            pieces.append((off, rec[start:pos]))
    if total is None:
        raise _NotDtls("record holds no handshake message")
    return total, seq


def _as_tls(body: bytes) -> bytes:
    """A DTLS ClientHello body as a TLS handshake message: version 0x0303 and no cookie."""
    if len(body) < 35 or body[0] != 0xFE:
        raise _Bad("DTLS ClientHello version is not 0xfe..")
    sid_end = 35 + body[34]
    if sid_end >= len(body) or body[34] > 32:
        raise _Bad("session_id overruns the hello")
    cookie_end = sid_end + 1 + body[sid_end]
    if cookie_end > len(body):
        raise _Bad("cookie overruns the hello")
    tls = b"\x03\x03" + body[2:sid_end] + body[cookie_end:]
    return bytes((CLIENT_HELLO,)) + len(tls).to_bytes(3, "big") + tls
