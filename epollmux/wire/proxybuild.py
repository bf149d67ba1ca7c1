"""Sans-I/O PROXY protocol headers to send, versions 1 (text) and 2 (binary), with their TLVs.

Owns: building v1 lines and v2 headers (optionally with a CRC32C TLV), the TLV builders, and the
address rules for outgoing headers.  The codes and the parser are `proxyproto.py`.
Must not import: socket, select, ssl, or anything of the reactor, connection, listener or config modules.

Building: addresses are Endpoint, sockaddr tuples `(ip, port, ...)`, `(family, ip, port)` tuples,
"ip:port" / "[v6]:port" / "unix:/path" strings, or None (unknown).  IPv4-mapped IPv6 addresses
(::ffff:a.b.c.d, what a dual-stack socket reports for IPv4 peers) are first turned back into IPv4; if the
two addresses then still differ in family, the IPv4 one is mapped to IPv6 and the header says TCP6, since a
header carries one family.  An unknown (None) or UNIX-with-IP pair gives `PROXY UNKNOWN` (v1) or UNSPEC
(v2, no addresses).  v1 cannot carry UNIX addresses: UNKNOWN.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from epollmux.wire.proxyproto import (CLIENT_SSL, CMD_LOCAL, CMD_PROXY, SIGNATURE_V2, SSL_CIPHER,
                                      SSL_CLIENT_CERT, SSL_CN, SSL_GROUP, SSL_KEY_ALG, SSL_SIG_ALG,
                                      SSL_SIG_SCHEME, SSL_VERSION, TLV, TLV_ALPN, TLV_AUTHORITY, TLV_CRC32C,
                                      TLV_NETNS, TLV_NOOP, TLV_SSL, TLV_UNIQUE_ID, UNIQUE_ID_MAX, UNIX_PATH_LEN,
                                      Endpoint, crc32c, ip_text)


def build_v1(src, dst) -> bytes:
    """A v1 line for src -> dst (see the module docstring for the accepted forms and the family rules)."""
    pair = _ip_pair(_endpoint(src), _endpoint(dst))
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    (s, sp), (d, dp) = pair
    proto = "TCP4" if s.version == 4 else "TCP6"
    return f"PROXY {proto} {ip_text(s)} {ip_text(d)} {sp} {dp}\r\n".encode("ascii")


def build_v2(src, dst, *, tlvs: Iterable[tuple[int, bytes]] = (), crc: bool = False,
             local: bool = False, dgram: bool = False) -> bytes:
    """A v2 header for src -> dst with `tlvs` (in order) and, if `crc`, a CRC32C TLV last.

    `local` gives a LOCAL header (16 bytes, no addresses: for health checks; src/dst are ignored).
    `dgram` says UDP / UNIX datagram instead of TCP / UNIX stream.  Raises ValueError when the header would
    exceed 65535 bytes after the fixed part or a value does not fit its field.
    """
    if local:
        if crc or tuple(tlvs):
            raise ValueError("a LOCAL header carries no TLVs")
        return SIGNATURE_V2 + bytes([0x20 | CMD_LOCAL, 0x00]) + b"\0\0"
    fam, block = _v2_block(_endpoint(src), _endpoint(dst), dgram)
    body = block + b"".join(_tlv_bytes(t, v) for t, v in tlvs)
    if crc:
        body += _tlv_bytes(TLV_CRC32C, b"\0\0\0\0")
    if len(body) > 0xFFFF:
        raise ValueError(f"PROXY v2 header of {len(body)} bytes after the fixed part exceeds 65535")
    header = SIGNATURE_V2 + bytes([0x20 | CMD_PROXY, fam]) + len(body).to_bytes(2, "big") + body
    if crc:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def _v2_block(src: Endpoint | None, dst: Endpoint | None, dgram: bool) -> tuple[int, bytes]:
    transport = 0x2 if dgram else 0x1
    if src is not None and dst is not None and src.port is None and dst.port is None:
        return 0x30 | transport, _unix_raw(src.host) + _unix_raw(dst.host)
    pair = _ip_pair(src, dst)
    if pair is None:
        return 0x00, b""
    (s, sp), (d, dp) = pair
    if s.version == 4:
        return 0x10 | transport, struct.pack("!4s4sHH", s.packed, d.packed, sp, dp)
    return 0x20 | transport, struct.pack("!16s16sHH", s.packed, d.packed, sp, dp)


def _unix_raw(path: str) -> bytes:
    raw = b"\0" + path[1:].encode("utf-8", "surrogateescape") if path.startswith("@") \
        else path.encode("utf-8", "surrogateescape")
    if len(raw) > UNIX_PATH_LEN:
        raise ValueError(f"UNIX path of {len(raw)} bytes exceeds {UNIX_PATH_LEN}")
    return raw.ljust(UNIX_PATH_LEN, b"\0")


def _tlv_bytes(type_: int, value: bytes) -> bytes:
    if not 0 <= type_ <= 0xFF:
        raise ValueError(f"TLV type {type_} is not one byte")
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV {type_:#04x} value of {len(value)} bytes exceeds 65535")
    return bytes([type_]) + len(value).to_bytes(2, "big") + bytes(value)


def _endpoint(value) -> Endpoint | None:
    """Coerce one address form (see the module docstring) to an Endpoint; raises ValueError."""
    if value is None or isinstance(value, Endpoint):
        return value
    if isinstance(value, str):
        return _endpoint_text(value)
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        value = value[1:]                 # (family, ip, port)
    if isinstance(value, tuple) and len(value) >= 2:
        host, port = value[0], value[1]
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise ValueError(f"bad port {port!r}")
        return Endpoint(ip_text(ip), port)
    raise ValueError(f"cannot use {value!r} as an address")


def _endpoint_text(text: str) -> Endpoint:
    if text.startswith("unix:"):
        return Endpoint(text[5:], None)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        sep = sep if ":" not in host else ""     # IPv6 needs brackets: "::1:80" is ambiguous
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r}: expected ip:port, [v6]:port or unix:/path")
    return _endpoint((host, int(port)))


def _ip_pair(src: Endpoint | None, dst: Endpoint | None):
    """((ip, port), (ip, port)) of one IP version, or None when the pair has no IP form."""
    if src is None or dst is None or src.port is None or dst.port is None:
        return None
    s, d = _unmapped(src.host), _unmapped(dst.host)
    if s.version != d.version:
        s, d = _mapped(s), _mapped(d)
    return (s, src.port), (d, dst.port)


def _unmapped(text: str):
    ip = ipaddress.ip_address(text)
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip


def _mapped(ip):
    return ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip


# ---------------------------------------------------------------------------------------------- TLVs

def tlv_alpn(protocol: str | bytes) -> TLV:
    """PP2_TYPE_ALPN: the (negotiated or first offered) ALPN id; text is latin-1 encoded."""
    return TLV(TLV_ALPN, protocol.encode("latin-1") if isinstance(protocol, str) else bytes(protocol))


def tlv_authority(host: str) -> TLV:
    """PP2_TYPE_AUTHORITY: the host name (for TLS, the SNI server_name), UTF-8."""
    return TLV(TLV_AUTHORITY, host.encode("utf-8"))


def tlv_unique_id(uid: bytes) -> TLV:
    if len(uid) > UNIQUE_ID_MAX:
        raise ValueError(f"UNIQUE_ID of {len(uid)} bytes exceeds {UNIQUE_ID_MAX}")
    return TLV(TLV_UNIQUE_ID, bytes(uid))


def tlv_noop(size: int = 0) -> TLV:
    """PP2_TYPE_NOOP: padding of 3 + size bytes, ignored by receivers."""
    return TLV(TLV_NOOP, bytes(size))


def tlv_netns(name: str) -> TLV:
    return TLV(TLV_NETNS, name.encode("ascii"))


def tlv_ssl(*, client: int = CLIENT_SSL, verify: int = 1, version: str | None = None, cn: str | None = None,
            cipher: str | None = None, sig_alg: str | None = None, key_alg: str | None = None,
            group: str | None = None, sig_scheme: str | None = None, client_cert: bytes | None = None) -> TLV:
    """PP2_TYPE_SSL: `client` bits (CLIENT_SSL | CLIENT_CERT_CONN | CLIENT_CERT_SESS), `verify` (0 only
    when a client certificate was presented and verified), then the sub-TLVs given, in type order."""
    if not 0 <= client <= 0xFF or not 0 <= verify <= 0xFFFFFFFF:
        raise ValueError("SSL client must fit one byte and verify four")
    texts = {SSL_VERSION: version, SSL_CN: cn, SSL_CIPHER: cipher, SSL_SIG_ALG: sig_alg,
             SSL_KEY_ALG: key_alg, SSL_GROUP: group, SSL_SIG_SCHEME: sig_scheme}
    subs = [_tlv_bytes(t, v.encode("utf-8")) for t, v in texts.items() if v is not None]
    if client_cert is not None:
        subs.append(_tlv_bytes(SSL_CLIENT_CERT, client_cert))
    return TLV(TLV_SSL, bytes([client]) + verify.to_bytes(4, "big") + b"".join(subs))
