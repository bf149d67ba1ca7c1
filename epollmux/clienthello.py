"""Sans-I/O parser for the first TLS ClientHello a client sends.

Owns: record framing of the first flight (several TLS handshake records are reassembled), the ClientHello
wire format, and what routing needs from it (SNI, ALPN, offered versions, whether ECH is present, how many
bytes the hello took).  It takes bytes and returns a value; it never raises on any input.

Must not import: socket, select, ssl or anything of the reactor, connection or config modules.

Rules that decide the status, in the order bytes arrive (so a verdict never changes once bytes that
decided it are present; more bytes only turn NEED_MORE into something else):
- NOT_TLS: the first record is not a handshake record (type 0x16) with major version 3, or the first
  handshake message is not a ClientHello (type 1).  SSLv2-format hellos are NOT_TLS.
- INVALID: a later record has another type or major version, a record is empty or longer than 2**14
  bytes, the hello is longer than MAX_HELLO_BYTES (16 KiB including its 4-byte header, so it never needs
  more than 16 KiB + 5 bytes per record), or any length inside it overruns its container.  Duplicate
  extensions, an SNI that is not ASCII and empty ALPN names are INVALID too (a backend would refuse them
  and routing on an ambiguous hello is unsafe).
- NEED_MORE: nothing decided yet and the bytes so far are a prefix of a possible hello.
- OK: the whole hello has been read.  Bytes after it (even in the same record) are not looked at.
A hello without an extensions block (legal up to TLS 1.2) is OK with no SNI and no ALPN.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 1
RECORD_HEADER_LEN = 5
HANDSHAKE_HEADER_LEN = 4
MAX_RECORD_LEN = 1 << 14                  # RFC 8446 5.1: larger plaintext fragments are record_overflow
MAX_HELLO_BYTES = 1 << 14                 # handshake header + ClientHello body
MIN_HELLO_BODY = 2 + 32 + 1 + 2 + 2 + 1 + 1  # version, random, sid, one suite, one compression method

EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_ECH = 0xFE0D                          # encrypted_client_hello
SNI_HOST_NAME = 0


class HelloStatus(enum.Enum):
    NEED_MORE = "need_more"
    NOT_TLS = "not_tls"
    INVALID = "invalid"
    OK = "ok"


@dataclass(frozen=True)
class HelloResult:
    status: HelloStatus
    sni: str | None = None                # first host_name, lowercased (the outer/public name under ECH)
    server_name: str | None = None        # the same name exactly as sent (PROXY v2 AUTHORITY copies it)
    alpn: tuple[str, ...] = ()            # offered protocols, in order (latin-1 decoded)
    versions: tuple[int, ...] = ()        # supported_versions without GREASE, else (legacy_version,)
    has_ech: bool = False
    length: int = 0                       # bytes of `data` up to the end of the hello (record headers included)
    reason: str = ""                      # why NOT_TLS / INVALID, for the debug log


class _NeedMore(Exception):
    pass


class _Invalid(Exception):
    pass


class _NotTls(Exception):
    pass


def _is_grease(value: int) -> bool:
    """RFC 8701 GREASE values: 0x?A?A with both bytes equal."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


class _Reader:
    """Reads a container [pos, limit) of `buf`, where `buf` may hold only a prefix of the message.

    Going past `limit` (a declared length) is INVALID; going past the bytes present is NEED_MORE.
    """

    def __init__(self, buf: bytes, pos: int, limit: int) -> None:
        self.buf, self.pos, self.limit = buf, pos, limit

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > self.limit:
            raise _Invalid(f"length {n} overruns its container")
        if end > len(self.buf):
            raise _NeedMore()
        chunk = self.buf[self.pos:end]
        self.pos = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def sub(self, len_bytes: int) -> _Reader:
        """A reader over the next vector, whose length is given by a `len_bytes`-byte prefix."""
        n = self.uint(len_bytes)
        if self.pos + n > self.limit:
            raise _Invalid(f"vector of {n} bytes overruns its container")
        inner = _Reader(self.buf, self.pos, self.pos + n)
        self.pos += n
        return inner

    def at_end(self) -> bool:
        return self.pos == self.limit


def _reassemble(data: bytes) -> tuple[bytes, int, int | None]:
    """Collect the handshake bytes of the first flight.

    Returns (the handshake bytes present, the hello's length with its header or None while unknown, the
    offset in `data` just past the last handshake byte collected).  Raises _NotTls or _Invalid as soon as
    the bytes present decide it.
    """
    hs = bytearray()
    hello_len: int | None = None
    pos = 0
    first = True
    while True:
        header = data[pos:pos + RECORD_HEADER_LEN]
        _check_record_header(header, first)
        if len(header) < RECORD_HEADER_LEN:
            return bytes(hs), hello_len, pos + len(header)
        reclen = int.from_bytes(header[3:5], "big")
        fragment = data[pos + RECORD_HEADER_LEN:pos + RECORD_HEADER_LEN + reclen]
        hs += fragment
        pos += RECORD_HEADER_LEN + len(fragment)
        if hello_len is None and len(hs) >= HANDSHAKE_HEADER_LEN:
            hello_len = _check_handshake_header(hs)
        if hello_len is not None and len(hs) >= hello_len:
            return bytes(hs[:hello_len]), hello_len, pos - (len(hs) - hello_len)
        if hello_len is None and hs:
            _check_handshake_type(hs)
        if len(fragment) < reclen:
            return bytes(hs), hello_len, pos
        first = False


def _check_record_header(header: bytes, first: bool) -> None:
    """Check whatever part of a record header is present."""
    bad = _NotTls if first else _Invalid
    if len(header) >= 1 and header[0] != RECORD_HANDSHAKE:
        raise bad(f"record type {header[0]:#04x} is not handshake")
    if len(header) >= 2 and header[1] != 3:
        raise bad(f"record major version {header[1]} is not 3")
    if len(header) >= 4 and (header[3] << 8) > MAX_RECORD_LEN:
        raise _Invalid("record longer than 2**14")
    if len(header) >= 5:
        reclen = int.from_bytes(header[3:5], "big")
        if reclen == 0:
            raise _Invalid("empty handshake record")
        if reclen > MAX_RECORD_LEN:
            raise _Invalid("record longer than 2**14")


def _check_handshake_type(hs: bytes | bytearray) -> None:
    if hs[0] != HANDSHAKE_CLIENT_HELLO:
        raise _NotTls(f"handshake type {hs[0]} is not ClientHello")


def _check_handshake_header(hs: bytes | bytearray) -> int:
    """Validate the 4-byte handshake header; return the hello's total length (header included)."""
    _check_handshake_type(hs)
    total = HANDSHAKE_HEADER_LEN + int.from_bytes(hs[1:4], "big")
    if total > MAX_HELLO_BYTES:
        raise _Invalid(f"ClientHello of {total} bytes exceeds the {MAX_HELLO_BYTES}-byte cap")
    if total < HANDSHAKE_HEADER_LEN + MIN_HELLO_BODY:
        raise _Invalid(f"ClientHello of {total} bytes is too short")
    return total


def _parse_body(hs: bytes, hello_len: int) -> dict:
    """Parse the ClientHello body from the handshake bytes present (possibly only a prefix of it)."""
    r = _Reader(hs, HANDSHAKE_HEADER_LEN, hello_len)
    legacy_version = r.uint(2)
    if legacy_version >> 8 != 3:
        raise _Invalid(f"legacy_version {legacy_version:#06x}")
    r.take(32)                                             # random
    session_id = r.sub(1)
    if session_id.limit - session_id.pos > 32:
        raise _Invalid("session_id longer than 32 bytes")
    suites = r.sub(2)
    if (suites.limit - suites.pos) < 2 or (suites.limit - suites.pos) % 2:
        raise _Invalid("bad cipher_suites length")
    compression = r.sub(1)
    if compression.limit == compression.pos:
        raise _Invalid("no compression methods")
    fields = {"sni": None, "server_name": None, "alpn": (), "versions": (legacy_version,), "has_ech": False}
    if r.at_end():
        return fields
    _parse_extensions(r.sub(2), fields)
    if not r.at_end():
        raise _Invalid("bytes after the extensions block")
    return fields


def _parse_extensions(r: _Reader, fields: dict) -> None:
    seen: set[int] = set()
    while not r.at_end():
        ext_type = r.uint(2)
        body = r.sub(2)
        if ext_type in seen:
            raise _Invalid(f"duplicate extension {ext_type:#06x}")
        seen.add(ext_type)
        if ext_type == EXT_SERVER_NAME:
            name = _parse_sni(body)
            fields["server_name"], fields["sni"] = name, name.lower() if name else None
        elif ext_type == EXT_ALPN:
            fields["alpn"] = _parse_alpn(body)
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            fields["versions"] = _parse_versions(body)
        elif ext_type == EXT_ECH:
            fields["has_ech"] = True


def _expect_end(r: _Reader, what: str) -> None:
    if not r.at_end():
        raise _Invalid(f"trailing bytes in {what}")


def _parse_sni(r: _Reader) -> str | None:
    names = r.sub(2)
    _expect_end(r, "server_name")
    if names.at_end():
        raise _Invalid("empty server_name list")
    found: str | None = None
    while not names.at_end():
        name_type = names.uint(1)
        name = names.take(names.uint(2))
        if name_type == SNI_HOST_NAME and found is None:
            if not name or not name.isascii() or b"\x00" in name:
                raise _Invalid("server name is empty, not ASCII or holds NUL")
            found = name.decode("ascii")
    return found


def _parse_alpn(r: _Reader) -> tuple[str, ...]:
    names = r.sub(2)
    _expect_end(r, "ALPN")
    if names.at_end():
        raise _Invalid("empty ALPN list")
    protocols = []
    while not names.at_end():
        name = names.take(names.uint(1))
        if not name:
            raise _Invalid("empty ALPN protocol name")
        protocols.append(name.decode("latin-1"))
    return tuple(protocols)


def _parse_versions(r: _Reader) -> tuple[int, ...]:
    versions = r.sub(1)
    _expect_end(r, "supported_versions")
    n = versions.limit - versions.pos
    if n < 2 or n % 2:
        raise _Invalid("bad supported_versions length")
    offered = []
    while not versions.at_end():
        v = versions.uint(2)
        if not _is_grease(v):
            offered.append(v)
    return tuple(offered)


def parse_client_hello(data: bytes) -> HelloResult:
    """Parse the ClientHello at the start of `data` (the client's first bytes, possibly incomplete).

    Results for `bytes` are remembered (a few): every `tls` route of a listener, then the access log and
    the PROXY header, ask about the same peeked bytes, and a parse costs ~30 µs.
    """
    if data.__class__ is bytes:
        return _parse_cached(data)
    return _parse(bytes(data))


@functools.lru_cache(maxsize=16)
def _parse_cached(data: bytes) -> HelloResult:
    return _parse(data)


def _parse(data: bytes) -> HelloResult:
    try:
        hs, hello_len, end = _reassemble(data)
        if hello_len is None:
            return HelloResult(HelloStatus.NEED_MORE)
        fields = _parse_body(hs, hello_len)
        if len(hs) < hello_len:               # skipped extensions may not have arrived yet
            return HelloResult(HelloStatus.NEED_MORE)
    except _NeedMore:
        return HelloResult(HelloStatus.NEED_MORE)
    except _NotTls as e:
        return HelloResult(HelloStatus.NOT_TLS, reason=str(e))
    except _Invalid as e:
        return HelloResult(HelloStatus.INVALID, reason=str(e))
    return HelloResult(HelloStatus.OK, length=end, **fields)
