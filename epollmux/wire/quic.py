"""QUIC client Initials (v1, RFC 9000/9001; v2, RFC 9369): the header shape, and the ClientHello inside.

Owns: long-header parsing (version, DCID/SCID, token, length, packet number), the Initial secrets derived
from the client's Destination Connection ID (HKDF-Extract with the version's salt, HKDF-Expand-Label
"client in", then "quic key/iv/hp" or "quicv2 key/iv/hp"), header protection removal (AES-ECB over the
16-byte sample), AES-128-GCM payload decryption (nonce = iv XOR packet number, the header as AAD), the
frames an Initial may carry (PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE) and the CRYPTO stream collected
by offset across coalesced packets and across datagrams, handed to clienthello.parse_handshake().

Never raises on any input.  Cost: the keys of a (version, DCID) are derived once and remembered (a few),
each Initial is decrypted once per call, and the result for the same datagrams is remembered (a few), so
every `quic` route of a listener and then the flow's names cost one decryption.  At most MAX_INITIALS
packets are opened per call, whatever the datagrams hold.

Must not import: socket, select, the reactor, connection or config modules.  Uses `cryptography` (AES);
HKDF over SHA-256 is two HMACs from the standard library.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from epollmux.wire import fragments
from epollmux.wire.clienthello import MAX_HELLO_BYTES, HelloResult, HelloStatus, parse_handshake

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF
SALTS = {
    VERSION_1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),     # RFC 9001 §5.2
    VERSION_2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),     # RFC 9369 §3.3.1
}
LABELS = {VERSION_1: b"quic ", VERSION_2: b"quicv2 "}
INITIAL_TYPE = {VERSION_1: 0, VERSION_2: 1}       # long-header type bits of an Initial (RFC 9369 §3.2)
MIN_INITIAL_DATAGRAM = 1200                        # RFC 9000 §14.1: a client pads its Initial datagrams
MIN_DCID, MAX_CID = 8, 20                          # RFC 9000 §7.2 (client's first DCID), §17.2
MAX_DATAGRAMS = 4                                  # a ClientHello not whole in this many datagrams: give up
MAX_INITIALS = 8                                   # Initial packets opened per call (keys are public: a sender
                                                   # can pack many tiny valid ones; each costs an AES-GCM open)
MEMO_MAX_BYTES = 16 << 10                          # results of larger flights are not remembered
SAMPLE_LEN = 16
TAG_LEN = 16

FRAME_PADDING, FRAME_PING, FRAME_ACK, FRAME_ACK_ECN, FRAME_CRYPTO, FRAME_CLOSE = 0x00, 0x01, 0x02, 0x03, 0x06, 0x1C


class _Bad(Exception):
    """Not a QUIC Initial flow this module can read (the message says why)."""


def _not_quic(reason: str) -> HelloResult:
    return HelloResult(HelloStatus.NOT_TLS, reason=reason)


def _invalid(reason: str) -> HelloResult:
    return HelloResult(HelloStatus.INVALID, reason=reason)


def varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """RFC 9000 §16 variable-length integer at pos (ending before `end`): (value, position after it)."""
    if pos >= end:
        raise _Bad("truncated integer")
    size = 1 << (buf[pos] >> 6)
    if pos + size > end:
        raise _Bad("truncated integer")
    return int.from_bytes(buf[pos:pos + size], "big") & ((1 << (8 * size - 2)) - 1), pos + size


class LongHeader:
    """One long-header packet of a datagram, as far as routing needs it."""

    __slots__ = ("first", "version", "dcid", "scid", "pn_offset", "end", "start")

    def __init__(self, datagram: bytes, start: int):
        """Parse the long header at `start`; raise _Bad if it is not one or does not fit the datagram."""
        d, size = datagram, len(datagram)
        if start + 7 > size:
            raise _Bad("truncated long header")
        self.start = start
        self.first = d[start]
        if not self.first & 0x80:
            raise _Bad("short header")
        self.version = int.from_bytes(d[start + 1:start + 5], "big")
        pos = start + 5
        n = d[pos]
        if n > MAX_CID or pos + 1 + n >= size:
            raise _Bad("bad destination connection id")
        self.dcid = d[pos + 1:pos + 1 + n]
        pos += 1 + n
        n = d[pos]
        if n > MAX_CID or pos + 1 + n > size:
            raise _Bad("bad source connection id")
        self.scid = d[pos + 1:pos + 1 + n]
        pos += 1 + n
        if self.is_initial():
            token_len, pos = varint(d, pos, size)
            pos += token_len
        length, pos = varint(d, pos, size)
        self.pn_offset = pos
        self.end = pos + length
        if self.end > size:
            raise _Bad("packet longer than the datagram")

    def is_initial(self) -> bool:
        kind = INITIAL_TYPE.get(self.version)
        return kind is not None and (self.first >> 4) & 3 == kind and bool(self.first & 0x40)


def is_initial(datagram: bytes) -> bool:
    """The shape of a client's first datagram: it starts with a long-header Initial of version 1 or 2 whose
    DCID has 8..20 bytes and whose length fits, and the datagram has at least 1200 bytes."""
    return _first_initial(datagram) is not None


def _first_initial(datagram: bytes) -> LongHeader | None:
    if len(datagram) < MIN_INITIAL_DATAGRAM:
        return None
    try:
        header = LongHeader(datagram, 0)
    except _Bad:
        return None
    return header if header.is_initial() and len(header.dcid) >= MIN_DCID else None


# ---------------------------------------------------------------- keys
def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1) with SHA-256, empty context, length <= 32: one HMAC block."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", hashlib.sha256)[:length]


def initial_keys(dcid: bytes, version: int) -> tuple[bytes, bytes, bytes]:
    """The client's Initial (key, iv, hp) for a DCID and a known version (RFC 9001 §5.2, RFC 9369 §3.3)."""
    initial_secret = hmac.digest(SALTS[version], dcid, hashlib.sha256)          # HKDF-Extract
    client = _expand_label(initial_secret, b"client in", 32)
    prefix = LABELS[version]
    return (_expand_label(client, prefix + b"key", 16), _expand_label(client, prefix + b"iv", 12),
            _expand_label(client, prefix + b"hp", 16))


class _Opener:
    """The ciphers of one (version, DCID): remove header protection, then decrypt."""

    __slots__ = ("aead", "iv", "ecb")

    def __init__(self, dcid: bytes, version: int):
        key, self.iv, hp = initial_keys(dcid, version)
        self.aead = AESGCM(key)
        self.ecb = Cipher(algorithms.AES(hp), modes.ECB())

    def open(self, d: bytes, h: LongHeader) -> bytes:
        """The plaintext payload of the Initial `h` in datagram `d`; _Bad on a wrong tag or a short packet."""
        pn_offset = h.pn_offset
        if h.end < pn_offset + 4 + SAMPLE_LEN or h.end - pn_offset < 4 + TAG_LEN:
            raise _Bad("Initial too short to sample")
        mask = self.ecb.encryptor().update(d[pn_offset + 4:pn_offset + 4 + SAMPLE_LEN])
        first = h.first ^ (mask[0] & 0x0F)
        pn_len = (first & 3) + 1
        pn_bytes = bytes(b ^ m for b, m in zip(d[pn_offset:pn_offset + pn_len], mask[1:1 + pn_len]))
        header = bytes((first,)) + d[h.start + 1:pn_offset] + pn_bytes
        # A client's first Initials have small packet numbers: the truncated number is the number.
        nonce = (int.from_bytes(self.iv, "big") ^ int.from_bytes(pn_bytes, "big")).to_bytes(12, "big")
        try:
            return self.aead.decrypt(nonce, d[pn_offset + pn_len:h.end], header)
        except InvalidTag:
            raise _Bad("Initial fails authentication") from None


_openers: dict[tuple[int, bytes], _Opener] = {}
_results: dict[tuple[bytes, ...], HelloResult] = {}
MEMO_SIZE = 16


def _remember(memo: dict, key, value) -> None:
    if len(memo) >= MEMO_SIZE:
        del memo[next(iter(memo))]
    memo[key] = value


def _opener(dcid: bytes, version: int) -> _Opener:
    opener = _openers.get((version, dcid))
    if opener is None:
        opener = _Opener(dcid, version)
        _remember(_openers, (version, dcid), opener)
    return opener


# ---------------------------------------------------------------- frames
def crypto_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """The (offset, data) of every CRYPTO frame of an Initial's plaintext; _Bad on a frame an Initial may
    not carry or a frame that overruns the packet."""
    pieces = []
    pos, end = 0, len(payload)
    while pos < end:
        kind = payload[pos]
        pos += 1
        if kind in (FRAME_PADDING, FRAME_PING):
            continue
        if kind in (FRAME_ACK, FRAME_ACK_ECN):
            _, pos = varint(payload, pos, end)             # largest acknowledged
            _, pos = varint(payload, pos, end)             # ack delay
            count, pos = varint(payload, pos, end)
            _, pos = varint(payload, pos, end)             # first range
            for _ in range(min(count, end) * 2 + (3 if kind == FRAME_ACK_ECN else 0)):
                _, pos = varint(payload, pos, end)         # gap, length ... then ECN counts
        elif kind == FRAME_CRYPTO:
            offset, pos = varint(payload, pos, end)
            length, pos = varint(payload, pos, end)
            if pos + length > end:
                raise _Bad("CRYPTO frame overruns the packet")
            if offset + length > MAX_HELLO_BYTES:
                raise _Bad("CRYPTO data beyond the ClientHello cap")
            pieces.append((offset, payload[pos:pos + length]))
            pos += length
        elif kind == FRAME_CLOSE:
            for _ in range(2):                              # error code, frame type
                _, pos = varint(payload, pos, end)
            length, pos = varint(payload, pos, end)
            pos += length
            if pos > end:
                raise _Bad("CONNECTION_CLOSE overruns the packet")
        else:
            raise _Bad(f"frame type {kind:#x} in an Initial")
    return pieces


# ---------------------------------------------------------------- the ClientHello of a flow
def client_hello(datagrams: tuple[bytes, ...]) -> HelloResult:
    """The ClientHello carried by a flow's first datagrams, as clienthello would report it: NOT_TLS when
    the first datagram is not a v1/v2 client Initial, INVALID on a failed decryption or a bad frame,
    NEED_MORE while the CRYPTO stream does not hold the whole hello (INVALID after MAX_DATAGRAMS)."""
    key = tuple(datagrams[:MAX_DATAGRAMS])
    result = _results.get(key)
    if result is None:
        try:
            result = _client_hello(key)
        except _Bad as e:
            result = _invalid(str(e))
        except Exception as e:              # never raise on any input (a defect here must not kill a worker)
            result = _invalid(f"unexpected {type(e).__name__}")
        if sum(map(len, key)) <= MEMO_MAX_BYTES:
            _remember(_results, key, result)
    return result


def _client_hello(datagrams: tuple[bytes, ...]) -> HelloResult:
    lead = _first_initial(datagrams[0]) if datagrams else None
    if lead is None:
        return _not_quic("not a QUIC v1/v2 client Initial")
    opener = _opener(lead.dcid, lead.version)
    pieces: list[tuple[int, bytes]] = []
    opened = 0
    for d in datagrams:
        pos = 0
        while pos < len(d) and d[pos] & 0x80:              # long-header packets; a short one ends the walk
            h = lead if pos == 0 and d is datagrams[0] else LongHeader(d, pos)
            if h.version != lead.version:
                raise _Bad("coalesced packet of another version")
            if h.is_initial():
                if h.dcid != lead.dcid:
                    raise _Bad("Initial with another destination connection id")
                opened += 1
                if opened > MAX_INITIALS:
                    raise _Bad(f"more than {MAX_INITIALS} Initial packets")
                pieces += crypto_frames(opener.open(d, h))
            pos = h.end
    stream = fragments.prefix(pieces)
    hello = parse_handshake(stream)
    if hello.status is HelloStatus.NEED_MORE and len(datagrams) >= MAX_DATAGRAMS:
        return _invalid(f"ClientHello not whole in {MAX_DATAGRAMS} datagrams")
    return hello
