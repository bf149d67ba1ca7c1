#!/usr/bin/env python3
"""Re-capture tests/fixtures/udp/*.bin: the first datagrams real UDP clients send.

For each fixture: bind a UDP socket on 127.0.0.1 (random port), start the client against it, record the
datagrams from the first source address until the fixture's stop condition holds (or CAPTURE_SECONDS),
then end the client by its PID.  A file holds the datagrams, each behind a 2-byte big-endian length
(tests/support/udp_fixtures.py reads them).

WireGuard and TeamSpeak have no client here: their fixtures are built from the published formats (BUILT).
Clients: aioquic (the test venv's Python), openssl s_client -dtls, openvpn (Debian packages).
Usage: python3 tests/support/capture_udp.py [NAME ...]     (default: all; writes tests/fixtures/udp)
Only loopback addresses are used; throwaway keys live in a temporary directory.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent     # tests/
sys.path.insert(0, str(HERE.parent))               # the repo
sys.path.insert(0, str(HERE))

from epollmux.wire import dtls, quic  # noqa: E402
from epollmux.wire.clienthello import HelloStatus  # noqa: E402
from support.capture_fixtures import client_env, end_process, openvpn_keys  # noqa: E402
from support.udp_fixtures import UDP_FIXTURE_DIR, pack  # noqa: E402

CAPTURE_SECONDS = 3.0
HOST = "www.example.org"
Stop = Callable[[tuple[bytes, ...]], bool]

AIOQUIC_CLIENT = """
import asyncio, sys
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
port, version, big = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "big"
conf = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=sys.argv[4],
                         original_version=version, supported_versions=[version], quantum_readiness_test=big)
async def main():
    async with connect("127.0.0.1", port, configuration=conf, wait_connected=True):
        pass
asyncio.run(asyncio.wait_for(main(), 20))
"""


def one_datagram(datagrams: tuple[bytes, ...]) -> bool:
    return len(datagrams) >= 1


def quic_hello_done(datagrams: tuple[bytes, ...]) -> bool:
    return quic.client_hello(datagrams).status is not HelloStatus.NEED_MORE


def dtls_hello_done(datagrams: tuple[bytes, ...]) -> bool:
    return dtls.client_hello(datagrams).status is not HelloStatus.NEED_MORE


def capture(argv: Callable[[int], list[str]], stop: Stop) -> tuple[bytes, ...]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        proc = subprocess.Popen(argv(port), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=client_env())
        got: list[bytes] = []
        source = None
        deadline = time.monotonic() + CAPTURE_SECONDS
        try:
            while not (got and stop(tuple(got))):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                try:
                    data, addr = sock.recvfrom(65536)
                except socket.timeout:
                    break
                if source is None:
                    source = addr
                if addr == source:
                    got.append(data)
        finally:
            end_process(proc)
        return tuple(got)


def aioquic(version: int, big: bool = False) -> Callable[[int], list[str]]:
    return lambda port: [sys.executable, "-c", AIOQUIC_CLIENT, str(port), str(version),
                         "big" if big else "small", HOST]


def openssl_dtls(*args: str, flag: str = "-dtls") -> Callable[[int], list[str]]:
    return lambda port: ["openssl", "s_client", flag, "-connect", f"127.0.0.1:{port}", *args]


def openvpn_udp(keys: dict[str, Path], *extra: str) -> Callable[[int], list[str]]:
    return lambda port: ["openvpn", "--client", "--proto", "udp", "--remote", "127.0.0.1", str(port),
                         "--dev", "null", "--nobind", "--verb", "0", "--connect-retry-max", "1",
                         "--ca", str(keys["cert"]), "--cert", str(keys["cert"]), "--key", str(keys["key"]), *extra]


def fixtures(keys: dict[str, Path]) -> dict[str, tuple[Callable[[int], list[str]], Stop]]:
    return {
        "quic_aioquic_v1": (aioquic(quic.VERSION_1), quic_hello_done),
        "quic_aioquic_v2": (aioquic(quic.VERSION_2), quic_hello_done),
        "quic_aioquic_v1_split": (aioquic(quic.VERSION_1, big=True), quic_hello_done),
        "dtls_openssl_sni": (openssl_dtls("-servername", HOST, "-alpn", "h2,coap"), dtls_hello_done),
        "dtls_openssl12": (openssl_dtls("-noservername", flag="-dtls1_2"), dtls_hello_done),
        "dtls_openssl_fragmented": (openssl_dtls("-servername", HOST, "-alpn", ",".join(["h2"] + [c * 200 for c in "xyz"]),
                                                 "-mtu", "400"), dtls_hello_done),
        "openvpn_udp": (openvpn_udp(keys), one_datagram),
        "openvpn_udp_tls_auth": (openvpn_udp(keys, "--tls-auth", str(keys["ta"]), "1"), one_datagram),
        "openvpn_udp_tls_auth_sha512": (openvpn_udp(keys, "--tls-auth", str(keys["ta"]), "1", "--auth", "SHA512"),
                                        one_datagram),
        "openvpn_udp_tls_crypt": (openvpn_udp(keys, "--tls-crypt", str(keys["ta"])), one_datagram),
        "openvpn_udp_tls_crypt_v2": (openvpn_udp(keys, "--tls-crypt-v2", str(keys["tcv2_client"])), one_datagram),
    }


def wireguard_initiation() -> tuple[bytes, ...]:
    """No WireGuard tool here: a handshake initiation laid out as the whitepaper's §5.4.2 gives it (type 1,
    3 reserved zero bytes, sender index, ephemeral 32, encrypted static 32+16, encrypted timestamp 12+16,
    mac1 16, mac2 16 = 148 bytes), fields filled with seeded random bytes, mac2 zero (no cookie)."""
    rng = random.Random(148)
    fields = [rng.randbytes(n) for n in (4, 32, 48, 28, 16)]
    return (b"\x01\x00\x00\x00" + b"".join(fields) + bytes(16),)


def teamspeak_init() -> tuple[bytes, ...]:
    """No TeamSpeak client here: a TS3 client's first init packet (`TS3INIT1`, packet id 0x0065, flags
    0x88, client version, step 0, timestamp, random, 8 reserved zero bytes), seeded random values."""
    rng = random.Random(3)
    return (b"TS3INIT1" + b"\x00\x65\x88" + rng.randbytes(4) + b"\x00" + rng.randbytes(8) + bytes(8),)


BUILT: dict[str, Callable[[], tuple[bytes, ...]]] = {
    "wireguard_initiation": wireguard_initiation,
    "teamspeak_init": teamspeak_init,
}


def main(names: list[str]) -> int:
    UDP_FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="epollmux-capture-udp-") as tmp:
        table = fixtures(openvpn_keys(Path(tmp)))
        for name in [n for n in names or BUILT if n in BUILT]:
            (UDP_FIXTURE_DIR / f"{name}.bin").write_bytes(pack(BUILT[name]()))
        rest = [n for n in names if n not in BUILT]
        if names and not rest:
            return 0
        names = rest
        unknown = set(names) - set(table)
        if unknown:
            print(f"unknown fixtures: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 1
        failed = 0
        for name in names or list(table):
            argv, stop = table[name]
            datagrams = capture(argv, stop)
            if not datagrams or not stop(datagrams):
                print(f"{name}: incomplete ({len(datagrams)} datagrams)", file=sys.stderr)
                failed += 1
                continue
            (UDP_FIXTURE_DIR / f"{name}.bin").write_bytes(pack(datagrams))
            print(f"{name}: {len(datagrams)} datagrams, {[len(d) for d in datagrams]} bytes")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
