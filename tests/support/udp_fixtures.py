"""Test helper: recorded first datagrams of UDP flows (tests/fixtures/udp/) and what each is.

A fixture file holds one flow's first datagrams, each as a 2-byte big-endian length and the bytes (a file
of one datagram written bare is read as that one datagram when its name says so: `raw=True`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UDP_FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "udp"


def pack(datagrams) -> bytes:
    return b"".join(len(d).to_bytes(2, "big") + d for d in datagrams)


def unpack(blob: bytes) -> tuple[bytes, ...]:
    out, pos = [], 0
    while pos < len(blob):
        n = int.from_bytes(blob[pos:pos + 2], "big")
        out.append(blob[pos + 2:pos + 2 + n])
        pos += 2 + n
    return tuple(out)


@dataclass(frozen=True)
class UdpFixture:
    name: str
    probe: str
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    raw: bool = False                   # the file is one bare datagram (a published test vector)

    @property
    def datagrams(self) -> tuple[bytes, ...]:
        blob = (UDP_FIXTURE_DIR / f"{self.name}.bin").read_bytes()
        return (blob,) if self.raw else unpack(blob)


UDP_FIXTURES = {f.name: f for f in (
    UdpFixture("quic_rfc9001_a2", "quic", "example.com", ("alpn",), raw=True),
    UdpFixture("quic_rfc9369_a2", "quic", "example.com", ("alpn",), raw=True),
    UdpFixture("quic_aioquic_v1", "quic", "www.example.org", ("h3",)),
    UdpFixture("quic_aioquic_v2", "quic", "www.example.org", ("h3",)),
    UdpFixture("quic_aioquic_v1_split", "quic", "www.example.org", ("h3",)),
    UdpFixture("dtls_openssl_sni", "dtls", "www.example.org", ("h2", "coap")),
    UdpFixture("dtls_openssl12", "dtls"),
    UdpFixture("dtls_openssl_fragmented", "dtls", "www.example.org", ("h2", "x" * 200, "y" * 200, "z" * 200)),
    UdpFixture("openvpn_udp", "openvpn"),
    UdpFixture("openvpn_udp_tls_auth", "openvpn"),
    UdpFixture("openvpn_udp_tls_auth_sha512", "openvpn"),
    UdpFixture("openvpn_udp_tls_crypt", "openvpn"),
    UdpFixture("openvpn_udp_tls_crypt_v2", "openvpn"),
    UdpFixture("wireguard_initiation", "wireguard"),
    UdpFixture("teamspeak_init", "teamspeak"),
)}


def seal_initial(dcid: bytes, pn: int, frames: bytes, version: int = 1, pad_to: int = 0) -> bytes:
    """A client Initial protected as RFC 9001 §5 says (test-side sealing, to build edge cases): 2-byte
    packet number, no token, SCID `scid0001`; the payload is padded with PADDING frames to `pad_to` bytes
    of packet."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from epollmux.wire import quic
    key, iv, hp = quic.initial_keys(dcid, version)
    first = 0xC0 | (quic.INITIAL_TYPE[version] << 4) | 0x01          # 2-byte packet number
    head = bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + b"\x08scid0001" + b"\x00"
    overhead = len(head) + 2 + 2 + 16
    frames += bytes(max(0, pad_to - overhead - len(frames), 4 - len(frames)))
    length = 2 + len(frames) + 16
    header = head + (0x4000 | length).to_bytes(2, "big") + pn.to_bytes(2, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, frames, header)
    pn_at = len(header) - 2
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sealed[2:18])
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    out[pn_at] ^= mask[1]
    out[pn_at + 1] ^= mask[2]
    return bytes(out)


def crypto_frame(offset: int, data: bytes) -> bytes:
    def varint(v: int) -> bytes:
        return (v | 0x4000).to_bytes(2, "big") if v < 1 << 14 else (v | 0x80000000).to_bytes(4, "big")
    return b"\x06" + varint(offset) + varint(len(data)) + data
