"""Real HAProxy bytes: /usr/sbin/haproxy in front of a Python backend socket, which parses what it received
with epollmux.wire.proxyproto (v1, v2 with CRC32C and unique-id, TLS termination with the SSL TLVs)."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from epollmux.wire import proxyproto as pp
from epollmux.wire.proxyproto import Endpoint, Status
from support.peers import HAProxy

SIG = pp.SIGNATURE_V2


def invalid(data: bytes, accept: str = "any", **kw) -> str:
    result = pp.parse(data, accept, **kw)
    assert result.status is Status.INVALID, result
    return result.reason


# ---------------------------------------------------------------------------------------------- HAProxy

@pytest.fixture
def haproxy_to(haproxy):
    """haproxy_to(server_options, frontend) -> (HAProxy on 127.0.0.1 and [::1], the backend socket it sends to)."""
    sockets: list[socket.socket] = []

    def start(server_options: str, frontend: str = "") -> tuple[HAProxy, socket.socket]:
        backend = socket.socket()
        backend.bind(("127.0.0.1", 0))
        backend.listen(4)
        backend.settimeout(10)
        sockets.append(backend)
        h = haproxy(f"127.0.0.1:{backend.getsockname()[1]} {server_options}", frontend, ipv6=True,
                    unique_id="%ci:%cp_%fp")
        return h, backend

    yield start
    for s in sockets:
        s.close()


def receive_header(backend: socket.socket, accept: str, payload: bytes) -> tuple[pp.Result, bytes]:
    """Accept HAProxy's connection and read until the header and `payload` are in; parse as bytes arrive."""
    conn, _ = backend.accept()
    with conn:
        conn.settimeout(10)
        data, verdicts = b"", []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            verdicts.append(pp.parse(data, accept))
            if verdicts[-1].status is not Status.NEED_MORE and len(data) >= verdicts[-1].length + len(payload):
                break
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    result = pp.parse(data, accept)
    assert result.status is Status.OK, (result, data)
    assert all(v.status is Status.NEED_MORE or v == result for v in verdicts)
    return result, data


def send_plain(port: int, payload: bytes, host: str = "127.0.0.1") -> socket.socket:
    client = socket.create_connection((host, port), timeout=10)
    client.sendall(payload)
    return client


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_haproxy_send_proxy_v1(haproxy_to, host):
    h, backend = haproxy_to("send-proxy")
    with send_plain(h.port, b"hello v1", host) as client:
        r, data = receive_header(backend, "v1", b"hello v1")
        me = client.getsockname()
    assert data.startswith(b"PROXY TCP4 " if host == "127.0.0.1" else b"PROXY TCP6 ")
    assert (r.version, r.command) == (1, "PROXY")
    assert r.src == Endpoint(host, me[1]) and r.dst == Endpoint(host, h.port)
    assert data[r.length:] == b"hello v1"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_haproxy_send_proxy_v2_with_crc_and_unique_id(haproxy_to, host):
    h, backend = haproxy_to("send-proxy-v2 proxy-v2-options crc32c,unique-id")
    with send_plain(h.port, b"hello v2", host) as client:
        r, data = receive_header(backend, "v2", b"hello v2")
        me = client.getsockname()
    assert data[:12] == SIG and data[12] == 0x21 and data[13] == (0x11 if host == "127.0.0.1" else 0x21)
    assert int.from_bytes(data[14:16], "big") == r.length - 16
    assert r.family == ("TCP4" if host == "127.0.0.1" else "TCP6")
    assert r.src == Endpoint(host, me[1]) and r.dst == Endpoint(host, h.port)
    assert len(r.tlv(pp.TLV_CRC32C)) == 4                 # present and verified by parse()
    assert r.unique_id == f"{host}:{me[1]}_{h.port}".encode()           # unique-id-format %ci:%cp_%fp
    assert data[r.length:] == b"hello v2"
    bad = bytearray(data[:r.length])
    bad[20] ^= 1
    assert "CRC32C" in invalid(bytes(bad))


def test_haproxy_tls_termination_sends_ssl_tlvs(haproxy_to, tls_ca, tmp_path):
    leaf = tls_ca.issue(["pp.example.test"])
    client_leaf = tls_ca.issue(["pp-client"])
    pem = tmp_path / "haproxy.pem"
    pem.write_text(leaf.chain.read_text() + leaf.key.read_text())
    frontend = f" ssl crt {pem} alpn h2,http/1.1 verify optional ca-file {tls_ca.cert}"
    options = "send-proxy-v2 proxy-v2-options ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c,unique-id"
    h, backend = haproxy_to(options, frontend)
    ctx = ssl.create_default_context(cafile=str(tls_ca.cert))
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(str(client_leaf.chain), str(client_leaf.key))
    with socket.create_connection(("127.0.0.1", h.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="pp.example.test") as client:
        client.sendall(b"inside tls")
        r, data = receive_header(backend, "v2", b"inside tls")
        me = client.getsockname()
        cipher, version, _ = client.cipher()
    assert r.src == Endpoint("127.0.0.1", me[1]) and r.dst == Endpoint("127.0.0.1", h.port)
    assert r.alpn == "h2" and r.authority == "pp.example.test"
    assert r.tlv(pp.TLV_CRC32C) is not None and r.unique_id == f"127.0.0.1:{me[1]}_{h.port}".encode()
    info = r.ssl
    assert info.ssl and info.client & pp.CLIENT_CERT_CONN and info.verify == 0 and info.cert_verified
    assert info.version == version and info.cipher == cipher
    assert info.cn == "pp-client"
    assert info.sig_alg and info.key_alg                     # of HAProxy's own cert (EC P-256 here)
    assert info.key_alg.startswith("EC")
    assert data[r.length:] == b"inside tls"
