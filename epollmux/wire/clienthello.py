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
import struct
from typing import NamedTuple

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
GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))   # RFC 8701: 0x?A?A with both bytes equal


class HelloStatus(enum.Enum):
    NEED_MORE = "need_more"
    NOT_TLS = "not_tls"
    INVALID = "invalid"
    OK = "ok"


class HelloResult(NamedTuple):
    """What a parse found (a named tuple: built on every parse, it costs a third of a frozen dataclass)."""

    status: HelloStatus
    sni: str | None = None                # first host_name, lowercased (the outer/public name under ECH)
    server_name: str | None = None        # the same name exactly as sent (PROXY v2 AUTHORITY copies it)
    alpn: tuple[str, ...] = ()            # offered protocols, in order (latin-1 decoded)
    versions: tuple[int, ...] = ()        # supported_versions without GREASE, else (legacy_version,)
    has_ech: bool = False
    length: int = 0                       # bytes of `data` up to the end of the hello (record headers included)
    reason: str = ""                      # why NOT_TLS / INVALID, for the debug log


class _NeedMore(Exception):
    """Not enough bytes: nothing can change before `need` handshake bytes are present (the check that
    failed reads up to there, and every check before it reads bytes that are already present)."""

    def __init__(self, need: int = 0, resume: tuple | None = None):
        self.need = need
        self.resume = resume            # the extension loop's state at the extension it stopped in


class _Invalid(Exception):
    pass


class _NotTls(Exception):
    pass


# How the walk reads: `buf` holds the bytes present, `avail = len(buf)`; a container ends at `limit` (a
# declared length).  Each read checks its end against the container first (past it: INVALID), then
# against the bytes present (past them: NEED_MORE), so the first overrun in wire order decides.
_type_and_length = struct.Struct(">HH").unpack_from
_NEED_MORE = HelloResult(HelloStatus.NEED_MORE)
_OPENED = frozenset((EXT_SERVER_NAME, EXT_ALPN, EXT_SUPPORTED_VERSIONS, EXT_ECH))


def _reassemble(data: bytes) -> tuple[bytes, int | None, int]:
    """Collect the handshake bytes of the first flight.

    Returns (the handshake bytes present, the hello's length with its header or None while unknown, the
    offset in `data` just past the last handshake byte collected).  Raises _NotTls or _Invalid as soon as
    the bytes present decide it.
    """
    hs = b""
    hello_len: int | None = None
    pos, size = 0, len(data)
    bad: type[Exception] = _NotTls           # the first record decides "not TLS"; later ones are INVALID
    while True:
        left = size - pos
        if left >= 1 and data[pos] != RECORD_HANDSHAKE:
            raise bad(f"record type {data[pos]:#04x} is not handshake")
        if left >= 2 and data[pos + 1] != 3:
            raise bad(f"record major version {data[pos + 1]} is not 3")
        if left >= 4 and (data[pos + 3] << 8) > MAX_RECORD_LEN:
            raise _Invalid("record longer than 2**14")
        if left < RECORD_HEADER_LEN:
            return hs, hello_len, size
        reclen = (data[pos + 3] << 8) | data[pos + 4]
        if reclen == 0:
            raise _Invalid("empty handshake record")
        if reclen > MAX_RECORD_LEN:
            raise _Invalid("record longer than 2**14")
        start = pos + RECORD_HEADER_LEN
        pos = min(start + reclen, size)
        hs = data[start:pos] if not hs else hs + data[start:pos]
        if hello_len is None and len(hs) >= HANDSHAKE_HEADER_LEN:
            hello_len = _hello_length(hs)
        if hello_len is not None and len(hs) >= hello_len:
            return hs[:hello_len], hello_len, pos - (len(hs) - hello_len)
        if hs and hs[0] != HANDSHAKE_CLIENT_HELLO:
            raise _NotTls(f"handshake type {hs[0]} is not ClientHello")
        if pos - start < reclen:
            return hs, hello_len, pos
        bad = _Invalid


def _hello_length(hs: bytes) -> int:
    """Validate the 4-byte handshake header; return the hello's total length (header included)."""
    if hs[0] != HANDSHAKE_CLIENT_HELLO:
        raise _NotTls(f"handshake type {hs[0]} is not ClientHello")
    total = HANDSHAKE_HEADER_LEN + int.from_bytes(hs[1:4], "big")
    if total > MAX_HELLO_BYTES:
        raise _Invalid(f"ClientHello of {total} bytes exceeds the {MAX_HELLO_BYTES}-byte cap")
    if total < HANDSHAKE_HEADER_LEN + MIN_HELLO_BODY:
        raise _Invalid(f"ClientHello of {total} bytes is too short")
    return total


def _vector(buf: bytes, pos: int, limit: int, avail: int, width: int, what: str = "vector of {} bytes") -> int:
    """The length of the vector whose `width`-byte (1 or 2) length prefix is at `pos`; it fits in `limit`.

    `what` names the vector in the overrun message: "length {}" for a name inside a list (the messages
    are the ones the parser has always given).
    """
    start = pos + width
    if start > limit:
        raise _Invalid(f"length {width} overruns its container")
    if start > avail:
        raise _NeedMore(start)
    n = buf[pos] if width == 1 else (buf[pos] << 8) | buf[pos + 1]
    if start + n > limit:
        raise _Invalid(f"{what.format(n)} overruns its container")
    return n


def _parse_body(hs: bytes, limit: int, resume: tuple | None = None) -> tuple:
    """Parse the ClientHello body from the handshake bytes present (possibly only a prefix of it).

    Returns (sni, server_name, alpn, versions, has_ech).  `limit` is the hello's length; it is at least
    HANDSHAKE_HEADER_LEN + MIN_HELLO_BODY, so the fixed fields up to the session_id length fit in it.
    resume: a _NeedMore's state from a parse of a shorter prefix of the same bytes (HelloReader).
    """
    avail = len(hs)
    if avail < 6:
        raise _NeedMore(6)
    legacy_version = (hs[4] << 8) | hs[5]
    if hs[4] != 3:
        raise _Invalid(f"legacy_version {legacy_version:#06x}")
    if avail < 39:                                         # random, session_id length
        raise _NeedMore(39)
    n = hs[38]
    pos = 39 + n
    if pos > limit:
        raise _Invalid(f"vector of {n} bytes overruns its container")
    if n > 32:
        raise _Invalid("session_id longer than 32 bytes")
    n = _vector(hs, pos, limit, avail, 2)
    pos += 2 + n
    if n < 2 or n % 2:
        raise _Invalid("bad cipher_suites length")
    n = _vector(hs, pos, limit, avail, 1)
    pos += 1 + n
    if n == 0:
        raise _Invalid("no compression methods")
    if pos == limit:
        return None, None, (), (legacy_version,), False
    n = _vector(hs, pos, limit, avail, 2)
    pos += 2
    fields = _parse_extensions(hs, pos, pos + n, avail, legacy_version, resume)
    if pos + n != limit:
        raise _Invalid("bytes after the extensions block")
    return fields


def _parse_extensions(hs: bytes, pos: int, limit: int, avail: int, legacy_version: int,
                      resume: tuple | None = None) -> tuple:
    """One loop over the extensions block [pos, limit); only SNI, ALPN and supported_versions are opened.

    An extension's type is added to `seen` once it parsed, so a _NeedMore's `resume` (the state at the
    start of the extension it stopped in) lets a later parse of more bytes go on from there.
    """
    if resume is None:
        sni = server_name = None
        alpn: tuple[str, ...] = ()
        versions = (legacy_version,)
        has_ech = False
        seen: set[int] = set()
    else:
        pos, sni, server_name, alpn, versions, has_ech, seen = resume
    add = seen.add
    start = pos
    try:
        while pos != limit:
            start = pos
            body = pos + 4
            if body > limit:                                   # type (2 bytes), then length (2 bytes)
                if pos + 2 <= limit and pos + 2 > avail:
                    raise _NeedMore(pos + 2)
                raise _Invalid("length 2 overruns its container")
            if body > avail:
                raise _NeedMore(body)
            ext_type, n = _type_and_length(hs, pos)
            pos = body + n
            if pos > limit:
                raise _Invalid(f"vector of {n} bytes overruns its container")
            if ext_type in seen:
                raise _Invalid(f"duplicate extension {ext_type:#06x}")
            if ext_type not in _OPENED:
                add(ext_type)
                continue
            if ext_type == EXT_SERVER_NAME:
                server_name = _parse_sni(hs, body, pos, avail)
                sni = server_name.lower() if server_name else None
            elif ext_type == EXT_ALPN:
                alpn = _parse_alpn(hs, body, pos, avail)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                versions = _parse_versions(hs, body, pos, avail)
            elif ext_type == EXT_ECH:
                has_ech = True
            add(ext_type)
    except _NeedMore as e:
        e.resume = (start, sni, server_name, alpn, versions, has_ech, seen)
        raise
    return sni, server_name, alpn, versions, has_ech


def _list_start(hs: bytes, pos: int, limit: int, avail: int, what: str) -> int:
    """Where the items of a non-empty 2-byte-length list filling [pos, limit) begin."""
    n = _vector(hs, pos, limit, avail, 2)
    if pos + 2 + n != limit:
        raise _Invalid(f"trailing bytes in {what}")
    if n == 0:
        raise _Invalid(f"empty {what} list")
    return pos + 2
def _parse_sni(hs: bytes, pos: int, limit: int, avail: int) -> str | None:
    """The first host_name of a server_name extension body [pos, limit)."""
    pos = _list_start(hs, pos, limit, avail, "server_name")
    found: str | None = None
    while pos != limit:
        if pos + 1 > avail:                                # name_type
            raise _NeedMore(pos + 1)
        name_type = hs[pos]
        n = _vector(hs, pos + 1, limit, avail, 2, "length {}")
        start = pos + 3
        pos = start + n
        if pos > avail:
            raise _NeedMore(pos)
        if name_type == SNI_HOST_NAME and found is None:
            name = hs[start:pos]
            if not name or not name.isascii() or b"\x00" in name:
                raise _Invalid("server name is empty, not ASCII or holds NUL")
            found = name.decode("ascii")
    return found


def _parse_alpn(hs: bytes, pos: int, limit: int, avail: int) -> tuple[str, ...]:
    pos = _list_start(hs, pos, limit, avail, "ALPN")
    protocols = []
    while pos != limit:
        n = _vector(hs, pos, limit, avail, 1, "length {}")
        start = pos + 1
        pos = start + n
        if pos > avail:
            raise _NeedMore(pos)
        if not n:
            raise _Invalid("empty ALPN protocol name")
        protocols.append(hs[start:pos].decode("latin-1"))
    return tuple(protocols)


def _parse_versions(hs: bytes, pos: int, limit: int, avail: int) -> tuple[int, ...]:
    """supported_versions without GREASE values."""
    n = _vector(hs, pos, limit, avail, 1)
    pos += 1
    if pos + n != limit:
        raise _Invalid("trailing bytes in supported_versions")
    if n < 2 or n % 2:
        raise _Invalid("bad supported_versions length")
    if limit > avail:
        raise _NeedMore(limit)
    return tuple([v for v in struct.unpack_from(f">{n >> 1}H", hs, pos) if v not in GREASE])


def parse_client_hello(data: bytes) -> HelloResult:
    """Parse the ClientHello at the start of `data` (the client's first bytes, possibly incomplete).

    Results for `bytes` are remembered (a few): every `tls` route of a listener, then the access log and
    the PROXY header, ask about the same peeked bytes; a HelloReader's owner tells its result with
    remember() so that those questions cost no parse at all.
    """
    if data.__class__ is not bytes:
        return _parse(bytes(data))
    result = _memo.get(data)
    if result is None:
        result = _parse(data)
        remember(data, result)
    return result


_memo: dict[bytes, HelloResult] = {}
MEMO_SIZE = 16


def remember(data: bytes, result: HelloResult) -> None:
    """Record what parse_client_hello(data) is (a HelloReader's result for exactly these bytes)."""
    if len(_memo) >= MEMO_SIZE:
        del _memo[next(iter(_memo))]
    _memo[data] = result


def parse_handshake(hs: bytes) -> HelloResult:
    """The ClientHello at the start of a bare handshake stream (no record layer: QUIC CRYPTO frames, a
    reassembled DTLS hello); `length` counts handshake bytes.  Not remembered (callers keep their own)."""
    return _parse(hs, records=False)


def _parse(data: bytes, records: bool = True) -> HelloResult:
    try:
        if records:
            hs, hello_len, end = _reassemble(data)
        else:
            hello_len = _hello_length(data) if len(data) >= HANDSHAKE_HEADER_LEN else None
            if data and data[0] != HANDSHAKE_CLIENT_HELLO:
                raise _NotTls(f"handshake type {data[0]} is not ClientHello")
            hs, end = data[:hello_len], hello_len
        if hello_len is None:
            return _NEED_MORE
        sni, server_name, alpn, versions, has_ech = _parse_body(hs, hello_len)
        if len(hs) < hello_len:               # skipped extensions may not have arrived yet
            return _NEED_MORE
    except _NeedMore:
        return _NEED_MORE
    except _NotTls as e:
        return HelloResult(HelloStatus.NOT_TLS, reason=str(e))
    except _Invalid as e:
        return HelloResult(HelloStatus.INVALID, reason=str(e))
    return HelloResult(HelloStatus.OK, sni, server_name, alpn, versions, has_ech, end)


class HelloReader:
    """The same verdict as parse_client_hello over all bytes fed so far, for O(bytes) work in total (an
    INVALID's reason may name another fault: faults are met in arrival order here).

    A connection feeds each edge's new bytes.  Records are reassembled as they come (a partial record
    header is kept, payload is appended to one buffer) and the body is parsed again only when the
    handshake bytes reach what the last parse said it needs; the extension loop resumes at the extension
    it stopped in.  So a hello drip-fed in 1-byte records costs about what it costs sent whole.
    """

    __slots__ = ("result", "fed", "_hs", "_hello_len", "_head", "_left", "_bad", "_need", "_resume")

    def __init__(self) -> None:
        self.result = _NEED_MORE
        self.fed = 0                    # bytes fed so far (the wire offset of the next byte)
        self._hs = bytearray()          # handshake bytes collected
        self._hello_len: int | None = None
        self._head = b""                # the bytes of a record header not complete yet
        self._left = 0                  # payload bytes of the current record still to come
        self._bad: type[Exception] = _NotTls
        self._need = 0                  # handshake bytes the body parse needs before it can say more
        self._resume: tuple | None = None

    def feed(self, data: bytes) -> HelloResult:
        """Take the next bytes; return the verdict over everything fed (fixed once it is not NEED_MORE)."""
        if self.result is not _NEED_MORE or not data:
            return self.result
        base = self.fed
        self.fed += len(data)
        try:
            end = self._records(data, base)
            hs, hello_len = self._hs, self._hello_len
            if hello_len is None or len(hs) < self._need:
                return _NEED_MORE
            try:
                fields = _parse_body(hs, hello_len, self._resume)
            except _NeedMore as e:
                self._need = e.need
                if e.resume is not None:
                    self._resume = e.resume
                return _NEED_MORE
            if end is None:                 # skipped extensions may not have arrived yet
                self._need, self._resume = hello_len, None    # (the loop's `seen` went past the resume point)
                return _NEED_MORE
        except _NotTls as e:
            self.result = HelloResult(HelloStatus.NOT_TLS, reason=str(e))
        except _Invalid as e:
            self.result = HelloResult(HelloStatus.INVALID, reason=str(e))
        else:
            self.result = HelloResult(HelloStatus.OK, *fields, end)
        return self.result

    def _records(self, data: bytes, base: int) -> int | None:
        """_reassemble's walk, fed in pieces; the wire offset just past the hello once it is complete."""
        hs = self._hs
        i, size = 0, len(data)
        while i < size:
            if not self._left:                                 # in a record header
                take = min(RECORD_HEADER_LEN - len(self._head), size - i)
                head = self._head = self._head + data[i:i + take]
                i += take
                if head[0] != RECORD_HANDSHAKE:
                    raise self._bad(f"record type {head[0]:#04x} is not handshake")
                if len(head) >= 2 and head[1] != 3:
                    raise self._bad(f"record major version {head[1]} is not 3")
                if len(head) >= 4 and (head[3] << 8) > MAX_RECORD_LEN:
                    raise _Invalid("record longer than 2**14")
                if len(head) < RECORD_HEADER_LEN:
                    return None
                reclen = (head[3] << 8) | head[4]
                if reclen == 0:
                    raise _Invalid("empty handshake record")
                if reclen > MAX_RECORD_LEN:
                    raise _Invalid("record longer than 2**14")
                self._left, self._head = reclen, b""
                continue
            take = min(self._left, size - i)
            before = len(hs)
            hs += data[i:i + take]
            i += take
            self._left -= take
            if self._hello_len is None and len(hs) >= HANDSHAKE_HEADER_LEN:
                self._hello_len = _hello_length(hs)
            hello_len = self._hello_len
            if hello_len is not None and len(hs) >= hello_len:
                del hs[hello_len:]
                return base + i - take + (hello_len - before)
            if hs[0] != HANDSHAKE_CLIENT_HELLO:
                raise _NotTls(f"handshake type {hs[0]} is not ClientHello")
            if not self._left:
                self._bad = _Invalid
        return None
