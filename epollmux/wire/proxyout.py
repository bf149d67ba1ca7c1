"""The PROXY protocol header a route sends to its backend, built from one connection's facts.

Owns: which TLVs a v2 header carries (AUTHORITY = the SNI, ALPN, UNIQUE_ID, SSL on terminated
connections, CRC32C on request). Must not import sockets, the reactor or the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from epollmux.wire import proxybuild, proxyproto


@dataclass
class Facts:
    """What is known of a connection when its backend is connected."""

    src: tuple                  # (ip, port) of the client, after any PROXY header received
    dst: tuple                  # (ip, port) the client connected to
    unique_id: bytes
    sni: str | None = None
    alpn: str | None = None     # negotiated when terminated, else the first offered
    tls_version: str | None = None
    tls_cipher: str | None = None
    client_cn: str | None = None
    client_cert: bool = False
    client_verified: bool = False
    session_reused: bool = False   # a resumed TLS session: its certificate was not sent on this connection


def header(version: str, facts: Facts, *, crc: bool = False) -> bytes:
    if version == "v1":
        return proxybuild.build_v1(facts.src, facts.dst)
    tlvs = [proxybuild.tlv_unique_id(facts.unique_id)]
    if facts.sni:
        tlvs.append(proxybuild.tlv_authority(facts.sni))
    if facts.alpn:
        tlvs.append(proxybuild.tlv_alpn(facts.alpn))
    if facts.tls_version:
        client = proxyproto.CLIENT_SSL
        if facts.client_cert:
            client |= proxyproto.CLIENT_CERT_SESS
            if not facts.session_reused:
                client |= proxyproto.CLIENT_CERT_CONN
        tlvs.append(proxybuild.tlv_ssl(client=client, verify=0 if facts.client_verified else 1,
                                       version=facts.tls_version, cn=facts.client_cn, cipher=facts.tls_cipher))
    return proxybuild.build_v2(facts.src, facts.dst, tlvs=tlvs, crc=crc)
