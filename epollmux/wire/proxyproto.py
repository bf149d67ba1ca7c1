"""Sans-I/O PROXY protocol, versions 1 (text) and 2 (binary): parse a received header.

Owns: both wire formats (HAProxy's proxy-protocol specification; README "Client addresses: PROXY
protocol and transparent mode"), the TLV and SSL sub-TLV codes, CRC32C (Castagnoli) and the parser.
Building a header to send is `proxybuild.py`.  Takes bytes, returns values; parse() never raises on any
input.

Must not import: socket, select, ssl, or anything of the reactor, connection, listener or config modules.

parse(data, accept) looks at the start of `data` (the peeked receive queue) and answers
- NEED_MORE: the bytes so far are a prefix of a header that may still be valid;
- INVALID (with a reason): they cannot begin a valid header, whatever follows;
- OK: a whole header; `length` is how many bytes it took (consume exactly those), the bytes after it are
  not looked at.
A verdict other than NEED_MORE never changes when more bytes arrive, so feeding a header byte by byte gives
NEED_MORE until its last byte.  Receiver rules chosen here (the spec leaves them open or asks for them):
- v1: the line is at most 107 bytes with its CRLF, every byte before the CRLF is printable ASCII (a lone CR
  or LF is INVALID at once), exactly one space between fields, no leading zeros in ports or IPv4 octets,
  ports 0-65535; IPv6 may be any RFC 4291 text form without a scope (reported in compressed form).
  `PROXY UNKNOWN` may be bare or followed by anything printable, which is ignored.
- v2: `len` is bounded by `max_v2_len` (MAX_V2_LEN = 4096 unless the caller chooses another, the spec's
  limit is 65535); ver nibble 2, command LOCAL or PROXY, family one of the seven listed (else INVALID).
  LOCAL: the whole block is skipped, family ignored, no addresses (use the socket's).  PROXY with UNSPEC:
  the whole block is skipped too (its layout is unknown), no addresses.  INET/INET6/UNIX (stream or dgram):
  addresses, then TLVs that must fill the block exactly.  ALPN, AUTHORITY, CRC32C, UNIQUE_ID, SSL and NETNS
  may appear once each; UNIQUE_ID is at most 128 bytes; SSL sub-TLVs must fill the SSL value exactly;
  a CRC32C TLV must be 4 bytes and match (big-endian, over the whole header with its value zeroed).
  Text TLVs are decoded leniently (errors replaced); the raw bytes stay in `tlvs`.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import NamedTuple

SIGNATURE_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LEN = 107                          # with CRLF: a 108-byte buffer always holds a v1 line
V2_HEADER_LEN = 16
MAX_V2_LEN = 4096                         # our default bound on the v2 `len` field (spec: 65535)
MAX_HEADER_LEN = V2_HEADER_LEN + MAX_V2_LEN   # peek this much to always see a whole header (default cap)
ACCEPT = ("v1", "v2", "any")

CMD_LOCAL, CMD_PROXY = 0x0, 0x1
FAMILIES_V2 = {                           # fam byte -> (name, address block length)
    0x00: ("UNSPEC", 0),
    0x11: ("TCP4", 12), 0x12: ("UDP4", 12),
    0x21: ("TCP6", 36), 0x22: ("UDP6", 36),
    0x31: ("UNIX_STREAM", 216), 0x32: ("UNIX_DGRAM", 216),
}
UNIX_PATH_LEN = 108

TLV_ALPN = 0x01
TLV_AUTHORITY = 0x02
TLV_CRC32C = 0x03
TLV_NOOP = 0x04
TLV_UNIQUE_ID = 0x05
TLV_SSL = 0x20
TLV_NETNS = 0x30
SSL_VERSION = 0x21
SSL_CN = 0x22
SSL_CIPHER = 0x23
SSL_SIG_ALG = 0x24
SSL_KEY_ALG = 0x25
SSL_GROUP = 0x26
SSL_SIG_SCHEME = 0x27
SSL_CLIENT_CERT = 0x28
CLIENT_SSL = 0x01                         # PP2_CLIENT_SSL
CLIENT_CERT_CONN = 0x02                   # a client certificate was sent on this connection
CLIENT_CERT_SESS = 0x04                   # ... at least once in this TLS session
UNIQUE_ID_MAX = 128
_SINGLETON_TLVS = frozenset({TLV_ALPN, TLV_AUTHORITY, TLV_CRC32C, TLV_UNIQUE_ID, TLV_SSL, TLV_NETNS})
_SINGLETON_SUBTLVS = frozenset(range(SSL_VERSION, SSL_CLIENT_CERT + 1))
_SSL_TEXT = {SSL_VERSION: "version", SSL_CN: "cn", SSL_CIPHER: "cipher", SSL_SIG_ALG: "sig_alg",
             SSL_KEY_ALG: "key_alg", SSL_GROUP: "group", SSL_SIG_SCHEME: "sig_scheme"}
_PRINTABLE = bytes(range(0x20, 0x7F))


class Status(enum.Enum):
    NEED_MORE = "need_more"
    INVALID = "invalid"
    OK = "ok"


class Endpoint(NamedTuple):
    """One end of the proxied connection: IP text (compressed form) and port, or a UNIX path and None."""

    host: str
    port: int | None

    def __str__(self) -> str:
        if self.port is None:
            return f"unix:{self.host}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class TLV(NamedTuple):
    type: int
    value: bytes


@dataclass(frozen=True)
class SSLInfo:
    """The PP2_TYPE_SSL TLV: `client` bits, `verify` (0 = a client certificate was presented and verified)."""

    client: int
    verify: int
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    group: str | None = None
    sig_scheme: str | None = None
    client_cert: bytes | None = None
    subtlvs: tuple[TLV, ...] = ()         # all sub-TLVs in order, raw (unknown ones included)

    @property
    def ssl(self) -> bool:
        return bool(self.client & CLIENT_SSL)

    @property
    def cert_verified(self) -> bool:
        return bool(self.client & (CLIENT_CERT_CONN | CLIENT_CERT_SESS)) and self.verify == 0


@dataclass(frozen=True)
class Result:
    status: Status
    reason: str = ""                      # why INVALID, for the log
    length: int = 0                       # bytes the header took (OK only)
    version: int = 0                      # 1 or 2 (OK only)
    command: str = ""                     # "PROXY" or "LOCAL"
    family: str = ""                      # v1: TCP4 TCP6 UNKNOWN; v2: a FAMILIES_V2 name (LOCAL: UNSPEC)
    src: Endpoint | None = None           # None: use the socket's own addresses
    dst: Endpoint | None = None
    tlvs: tuple[TLV, ...] = ()            # every TLV in order, raw (CRC32C and NOOP included)
    alpn: str | None = None               # latin-1, like clienthello's
    authority: str | None = None
    unique_id: bytes | None = None
    netns: str | None = None
    ssl: SSLInfo | None = None

    def tlv(self, type_: int) -> bytes | None:
        """The value of the first TLV of this type, or None."""
        return next((t.value for t in self.tlvs if t.type == type_), None)


NEED_MORE = Result(Status.NEED_MORE)


class _Invalid(Exception):
    pass


# ---------------------------------------------------------------------------------------------- parse

def parse(data: bytes | bytearray | memoryview, accept: str = "any", *, max_v2_len: int = MAX_V2_LEN) -> Result:
    """Parse the PROXY header at the start of `data`; `accept` is "v1", "v2" or "any"."""
    if accept not in ACCEPT:
        raise ValueError(f"accept must be one of {ACCEPT}, not {accept!r}")
    if not data:
        return NEED_MORE
    first = data[0]
    try:
        if first == SIGNATURE_V2[0] and accept != "v1":
            return _parse_v2(bytes(data[:V2_HEADER_LEN + max_v2_len]), max_v2_len)
        if first == V1_PREFIX[0] and accept != "v2":
            return _parse_v1(bytes(data[:V1_MAX_LEN]))
    except _Invalid as exc:
        return Result(Status.INVALID, reason=str(exc))
    want = {"v1": "a PROXY v1 header", "v2": "a PROXY v2 header", "any": "a PROXY header"}[accept]
    return Result(Status.INVALID, reason=f"not {want} (first byte {first:#04x})")


def _parse_v1(head: bytes) -> Result:
    n = min(len(head), len(V1_PREFIX))
    if head[:n] != V1_PREFIX[:n]:
        raise _Invalid("bad v1 signature")
    end = head.find(b"\r\n")
    if end < 0:
        _check_v1_chars(head[:-1] if head.endswith(b"\r") else head)
        if len(head) >= V1_MAX_LEN:
            raise _Invalid(f"no CRLF within {V1_MAX_LEN} bytes")
        return NEED_MORE
    _check_v1_chars(head[:end])
    fields = head[:end].decode("ascii").split(" ")
    proto = fields[1]
    if proto == "UNKNOWN":
        return Result(Status.OK, length=end + 2, version=1, command="PROXY", family="UNKNOWN")
    if proto not in ("TCP4", "TCP6"):
        raise _Invalid(f"unknown v1 protocol {proto[:16]!r}")
    if len(fields) != 6 or "" in fields:
        raise _Invalid("v1 line needs 6 fields separated by single spaces")
    src_ip, dst_ip = _v1_ip(fields[2], proto), _v1_ip(fields[3], proto)
    src = Endpoint(src_ip, _v1_port(fields[4]))
    dst = Endpoint(dst_ip, _v1_port(fields[5]))
    return Result(Status.OK, length=end + 2, version=1, command="PROXY", family=proto, src=src, dst=dst)


def _check_v1_chars(line: bytes) -> None:
    bad = line.translate(None, _PRINTABLE)
    if b"\r" in bad or b"\n" in bad:
        raise _Invalid("lone CR or LF in v1 line")
    if bad:
        raise _Invalid("control or non-ASCII byte in v1 line")


def _v1_ip(text: str, proto: str) -> str:
    try:
        if proto == "TCP4":
            ip = ipaddress.IPv4Address(text)
            if str(ip) != text:
                raise ValueError
        else:
            if "%" in text:
                raise ValueError
            ip = ipaddress.IPv6Address(text)
    except ValueError:
        raise _Invalid(f"bad {proto} address {text[:46]!r}") from None
    return ip_text(ip)


def _v1_port(text: str) -> int:
    if not (text.isdigit() and len(text) <= 5 and (text == "0" or text[0] != "0") and int(text) <= 65535):
        raise _Invalid(f"bad v1 port {text[:8]!r}")
    return int(text)


def _parse_v2(head: bytes, max_len: int) -> Result:
    n = min(len(head), len(SIGNATURE_V2))
    if head[:n] != SIGNATURE_V2[:n]:
        raise _Invalid("bad v2 signature")
    if len(head) < 13:
        return NEED_MORE
    if head[12] >> 4 != 2:
        raise _Invalid(f"v2 version nibble is {head[12] >> 4}, not 2")
    cmd = head[12] & 0x0F
    if cmd not in (CMD_LOCAL, CMD_PROXY):
        raise _Invalid(f"unknown v2 command {cmd:#x}")
    if len(head) < 14:
        return NEED_MORE
    fam = head[13]
    if cmd == CMD_PROXY and fam not in FAMILIES_V2:
        raise _Invalid(f"unknown v2 family/transport {fam:#04x}")
    if len(head) < V2_HEADER_LEN:
        return NEED_MORE
    length = int.from_bytes(head[14:16], "big")
    if length > max_len:
        raise _Invalid(f"v2 header of {length} bytes exceeds the {max_len}-byte cap")
    total = V2_HEADER_LEN + length
    if cmd == CMD_LOCAL:
        return NEED_MORE if len(head) < total else \
            Result(Status.OK, length=total, version=2, command="LOCAL", family="UNSPEC")
    name, addr_len = FAMILIES_V2[fam]
    if length < addr_len:
        raise _Invalid(f"v2 len {length} is shorter than the {name} address block ({addr_len})")
    if len(head) < total:
        return NEED_MORE
    if fam == 0x00:
        return Result(Status.OK, length=total, version=2, command="PROXY", family=name)
    src, dst = _v2_addresses(fam, head[V2_HEADER_LEN:V2_HEADER_LEN + addr_len])
    tlvs, offsets = _tlvs(head, V2_HEADER_LEN + addr_len, total)
    _check_crc(head[:total], tlvs, offsets)
    return Result(Status.OK, length=total, version=2, command="PROXY", family=name, src=src, dst=dst,
                  tlvs=tlvs, **_known_tlvs(tlvs))


def _v2_addresses(fam: int, block: bytes) -> tuple[Endpoint, Endpoint]:
    af = fam >> 4
    if af == 0x1:
        s, d, sp, dp = struct.unpack("!4s4sHH", block)
        return Endpoint(str(ipaddress.IPv4Address(s)), sp), Endpoint(str(ipaddress.IPv4Address(d)), dp)
    if af == 0x2:
        s, d, sp, dp = struct.unpack("!16s16sHH", block)
        return Endpoint(ip_text(ipaddress.IPv6Address(s)), sp), Endpoint(ip_text(ipaddress.IPv6Address(d)), dp)
    return Endpoint(_unix_path(block[:UNIX_PATH_LEN]), None), Endpoint(_unix_path(block[UNIX_PATH_LEN:]), None)


def _unix_path(raw: bytes) -> str:
    """A NUL-padded sun_path; an abstract name (leading NUL) is shown as '@name'."""
    if raw[:1] == b"\0":
        return "@" + raw[1:].rstrip(b"\0").decode("utf-8", "surrogateescape")
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _tlvs(buf: bytes, pos: int, end: int, singletons: frozenset = _SINGLETON_TLVS
          ) -> tuple[tuple[TLV, ...], list[int]]:
    """TLVs filling buf[pos:end] exactly, each of `singletons` at most once; also each value's offset."""
    out, offsets, seen = [], [], set()
    while pos < end:
        if pos + 3 > end:
            raise _Invalid("truncated TLV header")
        type_, vlen = buf[pos], int.from_bytes(buf[pos + 1:pos + 3], "big")
        if pos + 3 + vlen > end:
            raise _Invalid(f"TLV {type_:#04x} of {vlen} bytes overruns its container")
        if type_ in singletons and type_ in seen:
            raise _Invalid(f"TLV {type_:#04x} appears twice")
        seen.add(type_)
        out.append(TLV(type_, buf[pos + 3:pos + 3 + vlen]))
        offsets.append(pos + 3)
        pos += 3 + vlen
    return tuple(out), offsets


def _check_crc(header: bytes, tlvs: tuple[TLV, ...], offsets: list[int]) -> None:
    for tlv, offset in zip(tlvs, offsets):
        if tlv.type != TLV_CRC32C:
            continue
        if len(tlv.value) != 4:
            raise _Invalid(f"CRC32C TLV of {len(tlv.value)} bytes, not 4")
        zeroed = header[:offset] + b"\0\0\0\0" + header[offset + 4:]
        if crc32c(zeroed) != int.from_bytes(tlv.value, "big"):
            raise _Invalid("CRC32C mismatch")


def _known_tlvs(tlvs: tuple[TLV, ...]) -> dict:
    fields: dict = {}
    for type_, value in tlvs:
        if type_ == TLV_ALPN:
            fields["alpn"] = value.decode("latin-1")
        elif type_ == TLV_AUTHORITY:
            fields["authority"] = value.decode("utf-8", "replace")
        elif type_ == TLV_UNIQUE_ID:
            if len(value) > UNIQUE_ID_MAX:
                raise _Invalid(f"UNIQUE_ID of {len(value)} bytes exceeds {UNIQUE_ID_MAX}")
            fields["unique_id"] = value
        elif type_ == TLV_NETNS:
            fields["netns"] = value.decode("ascii", "replace")
        elif type_ == TLV_SSL:
            fields["ssl"] = _ssl_info(value)
    return fields


def _ssl_info(value: bytes) -> SSLInfo:
    if len(value) < 5:
        raise _Invalid(f"SSL TLV of {len(value)} bytes is shorter than 5")
    subtlvs, _ = _tlvs(value, 5, len(value), _SINGLETON_SUBTLVS)
    fields: dict = {}
    for type_, sub in subtlvs:
        if type_ in _SSL_TEXT:
            fields[_SSL_TEXT[type_]] = sub.decode("utf-8", "replace")
        elif type_ == SSL_CLIENT_CERT:
            fields["client_cert"] = sub
    return SSLInfo(client=value[0], verify=int.from_bytes(value[1:5], "big"), subtlvs=subtlvs, **fields)


# ---------------------------------------------------------------------------------------------- CRC32C

def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli, RFC 4960 App. B, reflected polynomial 0x82F63B78); `crc` continues a previous run."""
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def ip_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Compressed text of an address; IPv4-mapped IPv6 as ::ffff:a.b.c.d (Python 3.11 would give hex)."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)
