"""Test helper: build synthetic TLS ClientHellos (not part of the package).

`build_client_hello()` writes a well-formed hello with chosen SNI, ALPN, size and record fragmentation, so
tests can reach cases no installed client produces (2 KB post-quantum-sized hellos, hellos split over
several handshake records, ECH, GREASE).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_PADDING = 0x0015
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_ECH = 0xFE0D


def u8(n: int) -> bytes:
    return n.to_bytes(1, "big")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def vec8(body: bytes) -> bytes:
    return u8(len(body)) + body


def vec16(body: bytes) -> bytes:
    return u16(len(body)) + body


def extension(ext_type: int, body: bytes) -> bytes:
    return u16(ext_type) + vec16(body)


def sni_extension(name: str | bytes) -> bytes:
    raw = name.encode("ascii") if isinstance(name, str) else name
    return extension(EXT_SERVER_NAME, vec16(u8(0) + vec16(raw)))


def alpn_extension(protocols: Iterable[str | bytes]) -> bytes:
    names = b"".join(vec8(p.encode("latin-1") if isinstance(p, str) else p) for p in protocols)
    return extension(EXT_ALPN, vec16(names))


def versions_extension(versions: Iterable[int]) -> bytes:
    return extension(EXT_SUPPORTED_VERSIONS, vec8(b"".join(u16(v) for v in versions)))


def hello_body(extensions: bytes | None, legacy_version: int = 0x0303) -> bytes:
    """ClientHello body; extensions=None leaves out the extensions block entirely."""
    body = u16(legacy_version) + bytes(range(32)) + vec8(bytes(32)) + vec16(b"\x13\x01\x13\x02\xc0\x2f")
    body += vec8(b"\x00")
    if extensions is not None:
        body += vec16(extensions)
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return u8(msg_type) + u24(len(body)) + body


def records(hs: bytes, split: int | Sequence[int] | None = None, version: int = 0x0301) -> bytes:
    """Frame handshake bytes as TLS records, cutting the handshake bytes at the given offsets."""
    cuts = [] if split is None else ([split] if isinstance(split, int) else list(split))
    bounds = [0, *cuts, len(hs)]
    return b"".join(u8(0x16) + u16(version) + vec16(hs[a:b]) for a, b in zip(bounds, bounds[1:]))


def build_client_hello(sni: str | bytes | None = None, alpn: Sequence[str | bytes] = (), pad_to: int = 0,
                       record_split: int | Sequence[int] | None = None, versions: Sequence[int] = (0x0304,),
                       ech: bool = False, extra: bytes = b"") -> bytes:
    """A complete hello (records included).  pad_to: grow the handshake message to that many bytes."""
    exts = b""
    if sni is not None:
        exts += sni_extension(sni)
    if alpn:
        exts += alpn_extension(alpn)
    if versions:
        exts += versions_extension(versions)
    if ech:
        exts += extension(EXT_ECH, b"\x00\x00\x01\x00\x01\x42" + vec16(b"\x00" * 32) + vec16(b"\xaa" * 64))
    exts += extra
    size = len(handshake(hello_body(exts)))
    if pad_to > size:
        exts += extension(EXT_PADDING, bytes(max(0, pad_to - size - 4)))
    return records(handshake(hello_body(exts)), record_split)
