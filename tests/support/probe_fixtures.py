"""Test helper: the captured first bytes of real clients (tests/fixtures/probes/*.bin) and what each is.

FIXTURES maps a fixture name to the probe that must claim it and, for TLS, what the hello carries.
`chunkings()` gives the same bytes cut whole, byte by byte and at seeded random points.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "probes"


@dataclass(frozen=True)
class Fixture:
    name: str
    probe: str
    sni: str | None = None
    alpn: tuple[str, ...] = ()

    @property
    def data(self) -> bytes:
        return (FIXTURE_DIR / f"{self.name}.bin").read_bytes()


LONG_SNI = ".".join(["a" * 59] * 4) + ".example.org"

FIXTURES = {f.name: f for f in (
    Fixture("ssh_openssh", "ssh"),
    Fixture("http_curl_get", "http"),
    Fixture("http_curl_h2c_prior", "http"),
    Fixture("socks5_curl", "socks5"),
    Fixture("openvpn_tcp", "openvpn"),
    Fixture("openvpn_tcp_tls_auth", "openvpn"),
    Fixture("openvpn_tcp_tls_crypt_v2", "openvpn"),
    Fixture("syslog_logger", "syslog"),
    Fixture("tls_curl_sni", "tls", "www.example.org", ("http/1.1",)),
    Fixture("tls_curl_h2", "tls", "www.example.org", ("h2", "http/1.1")),
    Fixture("tls_openssl12", "tls"),
    Fixture("tls_openssl12_sni_alpn", "tls", "www.example.org", ("h2", "http/1.1")),
    Fixture("tls_openssl13", "tls"),
    Fixture("tls_openssl13_sni_alpn", "tls", "www.example.org", ("h2", "http/1.1")),
    Fixture("tls_openssl13_fragmented", "tls", LONG_SNI, ("h2", "http/1.1", "x" * 250, "y" * 250)),
    Fixture("tls_python_sni", "tls", "python.example.org"),
)}


def chunkings(data: bytes, seeds: range = range(5)) -> Iterator[tuple[str, list[bytes]]]:
    """(label, chunks): whole, byte by byte, and random cuts for each seed."""
    yield "whole", [data]
    yield "bytewise", [data[i:i + 1] for i in range(len(data))]
    for seed in seeds:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
        bounds = [0, *cuts, len(data)]
        yield f"seed{seed}", [data[a:b] for a, b in zip(bounds, bounds[1:])]
