"""Client addresses and limits end to end: real processes on loopback only.

- Interop: HAProxy (`send-proxy-v2`) in front of an epollmux listener that takes PROXY v2 from a trusted
  source, and epollmux sending v1 and v2 to nginx (`listen ... proxy_protocol`, `$proxy_protocol_addr` in its
  access log): the loopback address the client really had (127.0.0.7) reaches nginx's log, through
  passthrough and through termination.
- The v2 header a Python backend receives, field by field and TLV by TLV (walked here by hand, and with
  proxyproto.parse), the exact v1 line, TCP6 from an IPv6 client.
- PROXY headers in: untrusted, malformed, stalled, late, split, LOCAL, UNIX family; a live fuzz in which
  the daemon must agree with proxyproto.parse on every mutated header.
- Limits (global, listener, route, per source, sniffing per source, rate per source), each hit exactly at
  its number under a burst; source ACLs per listener and route, never reaching a backend; transparent mode.
- `--check` messages for bad values.
Clients take distinct 127.0.0.x source addresses by binding before connect. Every process is ended by its
PID (the fixtures of conftest.py and peers.py, and the haproxy fixture here).
"""

from __future__ import annotations

import json
import queue
import re
import socket
import ssl
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.daemon import closed_count, make_config, REPO, stats
from support.net import echo, free_port, recv_all, recv_upto, wait_until
from epollmux.wire import proxybuild as pb
from epollmux.wire import proxyproto as pp
from support.peers import need, wait_text

SIG = pp.SIGNATURE_V2
OK, NEED_MORE, INVALID = pp.Status.OK, pp.Status.NEED_MORE, pp.Status.INVALID


# --- configuration and daemon helpers ----------------------------------------------------------------
def config(listeners: dict[str, dict], routes: dict[str, dict], **glob) -> str:
    """make_config with workers = 1 (limits are per worker) and info logging."""
    return make_config(listeners, routes, **{"workers": 1, "log_level": "info", **glob})


def start(daemon, cfg: str, port: int):
    return daemon().start(cfg, ready=True)


FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def fields(line: str) -> dict[str, str]:
    """The key=value fields of one connection log line (quoted values unquoted)."""
    return {k: (json.loads(v) if v.startswith('"') else v) for k, v in FIELD.findall(line)}


def conn_lines(d, **want: str) -> list[dict[str, str]]:
    """The connection log lines (as fields) whose fields have the wanted values."""
    found = []
    for line in d.log_text().splitlines():
        if " client=" in line and " reason=" in line:
            f = fields(line)
            if all(f.get(k) == v for k, v in want.items()):
                found.append(f)
    return found


def wait_lines(d, n: int, timeout: float = 10.0, **want: str) -> list[dict[str, str]]:
    """Wait for exactly n connection log lines matching `want` (fails if there are more)."""
    deadline = time.monotonic() + timeout
    while len(found := conn_lines(d, **want)) < n:
        assert time.monotonic() < deadline, f"{want} < {n} times in log:\n{d.log_text()[-3000:]}"
        time.sleep(0.05)
    assert len(found) == n, (want, found)
    return found


def conn_line(d, client: str, timeout: float = 10.0) -> dict[str, str]:
    """The one connection log line (as fields) of `client` (ip:port as the daemon knows it)."""
    return wait_lines(d, 1, timeout, client=client)[0]


def seconds(f: dict[str, str]) -> float:
    """The duration field of a connection log line."""
    return float(f["duration"].rstrip("s"))


def unconnected(f: dict[str, str]) -> bool:
    """The line says no byte moved either way (the backends' accept counts show no connect was made)."""
    return f["up"] == "0" and f["down"] == "0"


def counter(block: str, what: str, route: str = "-") -> int:
    m = re.search(rf"^{re.escape(what)} route={re.escape(route)} (\d+)$", block, re.M)
    return int(m.group(1)) if m else 0


# --- clients -----------------------------------------------------------------------------------------
def client(port: int, src: str = "127.0.0.1", host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A TCP client bound to the source address `src` before connecting to host:port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.settimeout(timeout)
    sock.bind((src, 0))
    sock.connect((host, port))
    return sock


def answer(sock: socket.socket, data: bytes = b"ping", timeout: float = 5.0, head: bytes = b"") -> bytes:
    """Send head + data to an echo path (head: a PROXY header, not echoed) and read back up to len(data)
    bytes; b"" when the daemon closed instead."""
    try:
        sock.sendall(head + data)
    except (BrokenPipeError, ConnectionResetError):
        return b""
    sock.settimeout(timeout)
    return recv_upto(sock, len(data))


def closed_by_daemon(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True if the daemon closes this connection (EOF or RST) within timeout, sending nothing."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def client_hello(name: str | None, alpn: list[str] | None) -> bytes:
    """A real ClientHello from Python's ssl (MemoryBIO), not sent: SNI `name`, ALPN offers `alpn`."""
    ctx = ssl.create_default_context()
    if name is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def http_get(port: int, path: str, src: str, tls: ssl.SSLContext | None = None, name: str = "") -> tuple[str, int]:
    """GET path over HTTP/1.0 from source address src; (response text, the client's source port)."""
    sock = client(port, src)
    sport = sock.getsockname()[1]
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=name)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {name or 'x'}\r\n\r\n".encode())
        return recv_all(sock).decode(errors="replace"), sport


# --- backends ----------------------------------------------------------------------------------------
@dataclass
class Seen:
    result: pp.Result       # proxyproto.parse of what arrived first
    header: bytes           # the header's bytes as received (everything, if no header parsed)
    peer: tuple             # the backend connection's peer address (transparent mode shows here)


class Recorder:
    """A Python backend: reads until proxyproto.parse decides (as bytes arrive), records, then echoes
    everything after the header, so the client checks that its stream arrives intact behind the header."""

    def __init__(self, server, accept: str = "any", host: str = "127.0.0.1"):
        self.accept = accept
        self.seen: queue.Queue[Seen] = queue.Queue()
        self.server = server(self.handle, host=host)
        self.port = self.server.port

    @property
    def accepted(self) -> int:
        return self.server.accepted

    def handle(self, sock: socket.socket) -> None:
        peer = sock.getpeername()
        data = b""
        while (result := pp.parse(data, self.accept)).status is NEED_MORE:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if result.status is not OK:
            self.seen.put(Seen(result, data, peer))
            return
        self.seen.put(Seen(result, data[:result.length], peer))
        if data[result.length:]:
            sock.sendall(data[result.length:])
        echo(sock)

    def next(self, timeout: float = 10.0) -> Seen:
        return self.seen.get(timeout=timeout)


class PeerServer:
    """A plain echo backend that records the peer address of every connection (transparent mode)."""

    def __init__(self, server, host: str = "127.0.0.1"):
        self.peers: queue.Queue[tuple] = queue.Queue()
        self.server = server(self.handle, host=host)
        self.port = self.server.port

    def handle(self, sock: socket.socket) -> None:
        self.peers.put(sock.getpeername())
        echo(sock)


def walk_tlvs(header: bytes, start: int) -> list[tuple[int, bytes, int]]:
    """(type, value, value offset) of every TLV from start to the end, walked by hand from the spec."""
    out, pos = [], start
    while pos < len(header):
        type_, length = struct.unpack("!BH", header[pos:pos + 3])
        out.append((type_, header[pos + 3:pos + 3 + length], pos + 3))
        pos += 3 + length
    assert pos == len(header), "TLVs do not fill the header exactly"
    return out


def check_v2_fixed(header: bytes, fam: int, src: tuple, dst: tuple) -> dict[int, bytes]:
    """Check the fixed part and the address block of a v2 PROXY header; return {TLV type: value}."""
    assert header[:12] == SIG
    assert header[12] == 0x21                                  # version 2, command PROXY
    assert header[13] == fam
    assert struct.unpack("!H", header[14:16])[0] == len(header) - 16
    if fam == 0x11:
        s, d, sp, dp = struct.unpack("!4s4sHH", header[16:28])
        assert (socket.inet_ntop(socket.AF_INET, s), sp) == src and (socket.inet_ntop(socket.AF_INET, d), dp) == dst
        start = 28
    else:
        s, d, sp, dp = struct.unpack("!16s16sHH", header[16:52])
        assert (socket.inet_ntop(socket.AF_INET6, s), sp) == src and (socket.inet_ntop(socket.AF_INET6, d), dp) == dst
        start = 52
    tlvs = walk_tlvs(header, start)
    types = [t for t, _, _ in tlvs]
    assert len(types) == len(set(types)), f"a TLV type repeats: {types}"
    crc = [(v, off) for t, v, off in tlvs if t == pp.TLV_CRC32C]
    if crc:
        value, off = crc[0]
        zeroed = header[:off] + b"\0\0\0\0" + header[off + 4:]
        assert len(value) == 4 and int.from_bytes(value, "big") == pp.crc32c(zeroed)
    return {t: v for t, v, _ in tlvs}


# --- HAProxy in front --------------------------------------------------------------------------------
# --- 1. interop: HAProxy -> epollmux -> nginx ----------------------------------------------------------
@pytest.mark.timeout(60)
def test_client_address_reaches_nginx_log_through_haproxy_and_epollmux(daemon, nginx, haproxy, tls_ca,
                                                                         tmp_path):
    """127.0.0.7 reaches nginx's access log: via HAProxy (v2 in) and directly, passthrough (v1 and v2 out)
    and terminated (v2 out)."""
    leaf = tls_ca.issue("pp.example.test")
    web = free_port()
    access = tmp_path / "access.log"
    nginx(f"""
log_format pp '$proxy_protocol_addr $proxy_protocol_port $request_uri';
server {{
    listen 127.0.0.1:{web} proxy_protocol;
    access_log {access} pp;
    location / {{ default_type text/plain; return 200 "nginx saw $proxy_protocol_addr\\n"; }}
}}
""", [web])
    front, direct = free_port(), free_port()
    term = {"probe": "tls", "sni": "pp.example.test", "tls_cert": leaf.chain, "tls_key": leaf.key,
            "send_proxy": "v2", "backend": f"127.0.0.1:{web}"}
    cfg = config({"front": {"address": f"127.0.0.1:{front}", "proxy_protocol": "v2", "trusted": "127.0.0.1",
                            "routes": "term, plain_v1"},
                  "direct": {"address": f"127.0.0.1:{direct}", "routes": "term, plain_v2"}},
                 {"term": term,
                  "plain_v1": {"probe": "http", "send_proxy": "v1", "backend": f"127.0.0.1:{web}"},
                  "plain_v2": {"probe": "http", "send_proxy": "v2", "backend": f"127.0.0.1:{web}"}})
    d = start(daemon, cfg, direct)
    h = haproxy(f"127.0.0.1:{front} send-proxy-v2 proxy-v2-options crc32c,unique-id")     # TLVs epollmux skips
    tls = ssl.create_default_context(cafile=str(tls_ca.cert))
    cases = [("/haproxy/passthrough-v1", h.port, None, "front", "plain_v1"),
             ("/haproxy/terminated-v2", h.port, tls, "front", "term"),
             ("/direct/passthrough-v2", direct, None, "direct", "plain_v2"),
             ("/direct/terminated-v2", direct, tls, "direct", "term")]
    for path, port, ctx, listener, route in cases:
        response, sport = http_get(port, path, "127.0.0.7", ctx, "pp.example.test")
        assert response.startswith("HTTP/1.1 200") and "nginx saw 127.0.0.7" in response, (path, response)
        wait_text(access, f"127.0.0.7 {sport} {path}\n", 10)
        # epollmux itself knows the client by the address HAProxy's header gave (logs, limits, headers out)
        line = conn_line(d, f"127.0.0.7:{sport}")
        assert (line["listener"], line["route"]) == (listener, route), line
    assert "127.0.0.1" not in access.read_text()            # never the proxies' own address


@pytest.mark.timeout(40)
def test_haproxy_accepts_epollmux_v2_with_crc_and_ssl_tlvs(daemon, server, haproxy, tls_ca):
    """HAProxy (`accept-proxy`, which checks the CRC32C and the TLV layout) behind epollmux, passing the
    address on as v1 to a Python backend: passthrough and terminated with a client certificate."""
    rec = Recorder(server, "v1")
    leaf, client_leaf = tls_ca.issue("pp.example.test"), tls_ca.issue("pp-client")
    h = haproxy(f"127.0.0.1:{rec.port} send-proxy", " accept-proxy")
    port = free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}"}},
                 {"term": {"probe": "tls", "sni": "pp.example.test", "tls_cert": leaf.chain, "tls_key": leaf.key,
                           "tls_client_ca": tls_ca.cert, "tls_alpn": "h2", "send_proxy": "v2",
                           "send_proxy_crc": "yes", "backend": f"127.0.0.1:{h.port}"},
                  "pass": {"probe": "tls", "send_proxy": "v2", "send_proxy_crc": "yes",
                           "backend": f"127.0.0.1:{h.port}"}})
    start(daemon, cfg, port)
    ctx = ssl.create_default_context(cafile=str(tls_ca.cert))
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(str(client_leaf.chain), str(client_leaf.key))
    raw = client(port, "127.0.0.7")
    sport = raw.getsockname()[1]
    with ctx.wrap_socket(raw, server_hostname="pp.example.test") as c:
        assert answer(c, b"through haproxy") == b"through haproxy"
    assert rec.next().header == f"PROXY TCP4 127.0.0.7 127.0.0.1 {sport} {port}\r\n".encode()
    hello = client_hello("other.example.test", ["h2", "http/1.1"])
    with client(port, "127.0.0.7") as c:
        sport = c.getsockname()[1]
        assert answer(c, hello) == hello
    assert rec.next().header == f"PROXY TCP4 127.0.0.7 127.0.0.1 {sport} {port}\r\n".encode()
    assert rec.accepted == 2


# --- 2. the v2 header field by field, v1 line, TCP6 ------------------------------------------------------
@pytest.mark.timeout(30)
def test_v2_header_passthrough_every_field_and_tlv(daemon, server):
    """Passthrough: AUTHORITY = the sniffed SNI, ALPN = the first offered, UNIQUE_ID per connection,
    CRC32C valid with send_proxy_crc; no SSL TLV; the client's bytes follow the header intact."""
    rec = Recorder(server, "v2")
    port = free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}"}},
                 {"pass": {"probe": "tls", "sni": "pass.example.test", "send_proxy": "v2", "send_proxy_crc": "yes",
                           "backend": f"127.0.0.1:{rec.port}"},
                  "nosni": {"probe": "tls", "send_proxy": "v2", "backend": f"127.0.0.1:{rec.port}"}})
    start(daemon, cfg, port)
    ids = set()
    for name, alpn, want in [("pass.example.test", ["http/1.1", "h2"], {pp.TLV_UNIQUE_ID, pp.TLV_AUTHORITY,
                                                                       pp.TLV_ALPN, pp.TLV_CRC32C}),
                             ("pass.example.test", ["h2"], {pp.TLV_UNIQUE_ID, pp.TLV_AUTHORITY, pp.TLV_ALPN,
                                                            pp.TLV_CRC32C}),
                             (None, None, {pp.TLV_UNIQUE_ID})]:
        hello = client_hello(name, alpn)
        with client(port, "127.0.0.7") as c:
            sport = c.getsockname()[1]
            assert answer(c, hello) == hello                   # the stream behind the header is the client's
            seen = rec.next()
        tlvs = check_v2_fixed(seen.header, 0x11, ("127.0.0.7", sport), ("127.0.0.1", port))
        assert set(tlvs) == want, (name, alpn, sorted(tlvs))
        r = seen.result
        assert r.status is OK and r.length == len(seen.header) and r.family == "TCP4" and r.command == "PROXY"
        assert r.src == pp.Endpoint("127.0.0.7", sport) and r.dst == pp.Endpoint("127.0.0.1", port)
        assert r.ssl is None
        if name:
            assert tlvs[pp.TLV_AUTHORITY] == name.encode() and r.authority == name
            assert tlvs[pp.TLV_ALPN] == alpn[0].encode() and r.alpn == alpn[0]
        assert 1 <= len(r.unique_id) <= pp.UNIQUE_ID_MAX
        ids.add(r.unique_id)
    assert len(ids) == 3                                       # different per connection


@pytest.mark.timeout(30)
def test_authority_is_the_exact_server_name_the_client_sent(daemon, server, tls_ca):
    """PP2_TYPE_AUTHORITY is "the exact copy of the server_name extension": a client writing its server
    name in mixed case gets it forwarded as written (routes match SNI globs case-insensitively)."""
    rec = Recorder(server, "v2")
    leaf = tls_ca.issue("term.example.test")
    port = free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}"}},
                 {"pass": {"probe": "tls", "sni": "pass.example.test", "send_proxy": "v2",
                           "backend": f"127.0.0.1:{rec.port}"},
                  "term": {"probe": "tls", "sni": "term.example.test", "tls_cert": leaf.chain, "tls_key": leaf.key,
                           "send_proxy": "v2", "backend": f"127.0.0.1:{rec.port}"}})
    start(daemon, cfg, port)
    hello = client_hello("Pass.Example.TEST", None)
    assert b"Pass.Example.TEST" in hello
    with client(port) as c:
        assert answer(c, hello) == hello
    authorities = [rec.next().result.authority]
    ctx = ssl.create_default_context(cafile=str(tls_ca.cert))
    with ctx.wrap_socket(client(port), server_hostname="Term.Example.TEST") as c:
        assert answer(c, b"x") == b"x"
    authorities.append(rec.next().result.authority)
    assert authorities == ["Pass.Example.TEST", "Term.Example.TEST"]


@pytest.mark.timeout(30)
def test_v2_header_terminated_ssl_tlv_with_and_without_client_certificate(daemon, server, tls_ca):
    """Terminated: AUTHORITY from the handshake, ALPN negotiated (not the first offered), SSL TLV with
    version and cipher; with a verified client certificate: CN, cert bits and verify = 0."""
    rec = Recorder(server, "v2")
    term_leaf, mtls_leaf = tls_ca.issue("term.example.test"), tls_ca.issue("mtls.example.test")
    client_leaf = tls_ca.issue("pp-client")
    port, mport = free_port(), free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}", "routes": "term"},
                  "mutual": {"address": f"127.0.0.1:{mport}", "routes": "mtls"}},
                 {"term": {"probe": "tls", "sni": "term.example.test", "tls_cert": term_leaf.chain,
                           "tls_key": term_leaf.key, "tls_alpn": "h2, http/1.1", "send_proxy": "v2",
                           "backend": f"127.0.0.1:{rec.port}"},
                  "mtls": {"probe": "tls", "sni": "mtls.example.test", "tls_cert": mtls_leaf.chain,
                           "tls_key": mtls_leaf.key, "tls_client_ca": tls_ca.cert, "send_proxy": "v2",
                           "send_proxy_crc": "yes", "backend": f"127.0.0.1:{rec.port}"}})
    start(daemon, cfg, mport)

    ctx = ssl.create_default_context(cafile=str(tls_ca.cert))
    ctx.set_alpn_protocols(["http/1.1", "h2"])                # the route prefers h2: negotiated != first
    raw = client(port, "127.0.0.7")
    sport = raw.getsockname()[1]
    with ctx.wrap_socket(raw, server_hostname="term.example.test") as c:
        assert answer(c, b"plaintext inside") == b"plaintext inside"
        version, cipher, negotiated = c.version(), c.cipher()[0], c.selected_alpn_protocol()
        seen = rec.next()
    assert negotiated == "h2"
    tlvs = check_v2_fixed(seen.header, 0x11, ("127.0.0.7", sport), ("127.0.0.1", port))
    assert set(tlvs) == {pp.TLV_UNIQUE_ID, pp.TLV_AUTHORITY, pp.TLV_ALPN, pp.TLV_SSL}
    assert tlvs[pp.TLV_AUTHORITY] == b"term.example.test" and tlvs[pp.TLV_ALPN] == b"h2"
    ssl_tlv = tlvs[pp.TLV_SSL]
    assert ssl_tlv[0] == pp.CLIENT_SSL                        # SSL, no client certificate
    assert struct.unpack("!I", ssl_tlv[1:5])[0] != 0          # 0 only when a certificate was verified
    subs = dict((t, v) for t, v, _ in walk_tlvs(ssl_tlv, 5))
    assert subs[pp.SSL_VERSION] == version.encode() and subs[pp.SSL_CIPHER] == cipher.encode()
    assert pp.SSL_CN not in subs
    assert seen.result.status is OK and seen.result.ssl.version == version

    mctx = ssl.create_default_context(cafile=str(tls_ca.cert))
    mctx.load_cert_chain(str(client_leaf.chain), str(client_leaf.key))
    raw = client(mport, "127.0.0.7")
    sport = raw.getsockname()[1]
    with mctx.wrap_socket(raw, server_hostname="mtls.example.test") as c:
        assert answer(c, b"mutual") == b"mutual"
        version, cipher = c.version(), c.cipher()[0]
        seen2 = rec.next()
    tlvs = check_v2_fixed(seen2.header, 0x11, ("127.0.0.7", sport), ("127.0.0.1", mport))
    assert set(tlvs) == {pp.TLV_UNIQUE_ID, pp.TLV_AUTHORITY, pp.TLV_SSL, pp.TLV_CRC32C}   # no ALPN offered
    ssl_tlv = tlvs[pp.TLV_SSL]
    assert ssl_tlv[0] & pp.CLIENT_SSL and ssl_tlv[0] & pp.CLIENT_CERT_CONN
    assert struct.unpack("!I", ssl_tlv[1:5])[0] == 0
    subs = dict((t, v) for t, v, _ in walk_tlvs(ssl_tlv, 5))
    assert subs[pp.SSL_CN] == b"pp-client"
    assert subs[pp.SSL_VERSION] == version.encode() and subs[pp.SSL_CIPHER] == cipher.encode()
    info = seen2.result.ssl
    assert seen2.result.status is OK and info.cert_verified and info.cn == "pp-client"
    assert seen.result.unique_id != seen2.result.unique_id


@pytest.mark.timeout(30)
def test_ssl_tlv_on_a_resumed_session_says_certificate_of_the_session_not_of_the_connection(daemon, server,
                                                                                            tls_ca):
    """PP2_CLIENT_CERT_CONN: a certificate was sent over *this* connection; PP2_CLIENT_CERT_SESS: at least
    once in the TLS session. A resumed session carries the first connection's certificate without the
    client sending it again: SESS, not CONN (HAProxy sets CONN only when the certificate was verified
    during this handshake)."""
    rec = Recorder(server, "v2")
    leaf, client_leaf = tls_ca.issue("mtls.example.test"), tls_ca.issue("pp-client")
    port = free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}"}},
                 {"mtls": {"probe": "tls", "tls_cert": leaf.chain, "tls_key": leaf.key, "tls_client_ca": tls_ca.cert,
                           "tls_resumption": "yes", "send_proxy": "v2", "backend": f"127.0.0.1:{rec.port}"}})
    start(daemon, cfg, port)
    ctx = ssl.create_default_context(cafile=str(tls_ca.cert))
    ctx.load_cert_chain(str(client_leaf.chain), str(client_leaf.key))
    session, flags = None, []
    for _ in range(2):
        with ctx.wrap_socket(client(port), server_hostname="mtls.example.test", session=session) as c:
            assert answer(c, b"resume") == b"resume"          # TLS 1.3 tickets arrive with the first reply
            reused = c.session_reused
            session = c.session
        info = rec.next().result.ssl
        flags.append((reused, info.client & (pp.CLIENT_CERT_CONN | pp.CLIENT_CERT_SESS), info.cn))
    assert flags[0] == (False, pp.CLIENT_CERT_CONN | pp.CLIENT_CERT_SESS, "pp-client")
    assert flags[1] == (True, pp.CLIENT_CERT_SESS, "pp-client"), flags


@pytest.mark.timeout(30)
def test_v1_exact_line_and_tcp6_from_an_ipv6_client(daemon, server):
    rec = Recorder(server)
    port = free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}, [::1]:{port}"}},
                 {"v1": {"probe": "http", "send_proxy": "v1", "backend": f"127.0.0.1:{rec.port}"},
                  "v2": {"probe": "any", "send_proxy": "v2", "backend": f"127.0.0.1:{rec.port}"}})
    start(daemon, cfg, port)
    request = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"
    with client(port, "127.0.0.7") as c:
        sport = c.getsockname()[1]
        assert answer(c, request) == request
        assert rec.next().header == f"PROXY TCP4 127.0.0.7 127.0.0.1 {sport} {port}\r\n".encode()
    with client(port, "::1", "::1") as c:
        sport = c.getsockname()[1]
        assert answer(c, request) == request
        assert rec.next().header == f"PROXY TCP6 ::1 ::1 {sport} {port}\r\n".encode()
    with client(port, "::1", "::1") as c:
        sport = c.getsockname()[1]
        assert answer(c, b"not http") == b"not http"
        seen = rec.next()
    tlvs = check_v2_fixed(seen.header, 0x21, ("::1", sport), ("::1", port))
    assert set(tlvs) == {pp.TLV_UNIQUE_ID}
    assert seen.result.family == "TCP6" and seen.result.src == pp.Endpoint("::1", sport)


# --- 3. PROXY headers in -----------------------------------------------------------------------------------
def pp_listener_config(port: int, v2port: int, backend: int, **glob) -> str:
    """`pp` takes any PROXY header from 127.0.0.1 only; `pp2` takes v2 only. One route, probe any,
    sending v1 to the backend: what the backend receives is the address the daemon settled on."""
    return config({"pp": {"address": f"127.0.0.1:{port}", "proxy_protocol": "any", "trusted": "127.0.0.1/32"},
                   "pp2": {"address": f"127.0.0.1:{v2port}", "proxy_protocol": "v2", "trusted": "127.0.0.0/8"}},
                  {"all": {"probe": "any", "send_proxy": "v1", "backend": f"127.0.0.1:{backend}"}},
                  probe_timeout=0.5, **glob)


@pytest.mark.timeout(40)
def test_bad_headers_are_closed_and_counted_while_good_clients_are_served(daemon, server):
    rec = Recorder(server, "v1")
    port, v2port = free_port(), free_port()
    d = start(daemon, pp_listener_config(port, v2port, rec.port), port)
    v2_head = pb.build_v2(("198.51.100.20", 1000), ("198.51.100.1", 443), tlvs=[pb.tlv_authority("x.test")],
                          crc=True)

    stall = client(port)                                       # part of a v2 header, then nothing
    stall.sendall(v2_head[:9])
    silent = client(port)                                      # nothing at all
    t0 = time.monotonic()

    good = []
    # a v1 header: its addresses are the client's from then on
    with client(port) as c:
        assert answer(c, b"good v1", head=pb.build_v1(("203.0.113.5", 4444), ("198.51.100.1", 443))) == b"good v1"
        good.append(b"PROXY TCP4 203.0.113.5 198.51.100.1 4444 443\r\n")
    # a v2 header with TLVs and a CRC, IPv6 addresses
    with client(port) as c:
        head = pb.build_v2(("2001:db8::5", 5555), ("2001:db8::1", 443), tlvs=[pb.tlv_unique_id(b"x")], crc=True)
        assert answer(c, b"good v2", head=head) == b"good v2"
        good.append(b"PROXY TCP6 2001:db8::5 2001:db8::1 5555 443\r\n")
    # the header arrives after the accept (a proxy's connect completes before its first write)
    with client(port) as c:
        time.sleep(0.2)
        assert answer(c, b"late", head=v2_head) == b"late"
        good.append(b"PROXY TCP4 198.51.100.20 198.51.100.1 1000 443\r\n")
    # the header in two segments
    with client(port) as c:
        c.sendall(v2_head[:20])
        time.sleep(0.1)
        assert answer(c, b"split", head=v2_head[20:]) == b"split"
        good.append(b"PROXY TCP4 198.51.100.20 198.51.100.1 1000 443\r\n")
    # LOCAL (a health check): accepted, and the real socket addresses are used
    with client(port) as c:
        sport = c.getsockname()[1]
        assert answer(c, b"local", head=pb.build_v2(None, None, local=True)) == b"local"
        good.append(f"PROXY TCP4 127.0.0.1 127.0.0.1 {sport} {port}\r\n".encode())
    # PROXY UNKNOWN (v1): accepted, the real addresses too
    with client(port) as c:
        sport = c.getsockname()[1]
        assert answer(c, b"unknown", head=b"PROXY UNKNOWN\r\n") == b"unknown"
        good.append(f"PROXY TCP4 127.0.0.1 127.0.0.1 {sport} {port}\r\n".encode())
    # the v2-only listener trusts 127.0.0.0/8
    with client(v2port, "127.0.0.3") as c:
        assert answer(c, b"v2 only", head=v2_head) == b"v2 only"
        good.append(b"PROXY TCP4 198.51.100.20 198.51.100.1 1000 443\r\n")
    assert [rec.next().header for _ in good] == good
    good_log = conn_line(d, "203.0.113.5:4444")
    assert (good_log["listener"], good_log["route"], good_log["reason"]) == ("pp", "all", "eof"), good_log

    bad = {}
    untrusted = client(port, "127.0.0.2")                      # a valid header, from a source not trusted
    untrusted.sendall(v2_head + b"spoof")
    bad["proxy-untrusted"] = [untrusted]
    malformed = [b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\nx", b"GET / HTTP/1.0\r\n\r\n",
                 SIG + b"\x21\x11\x00\x10" + bytes(12) + b"\x05\x00\x0a\x00" + b"TLV overruns"]
    bad["proxy-invalid"] = []
    for data in malformed:
        c = client(port)
        c.sendall(data)
        bad["proxy-invalid"].append(c)
    c = client(v2port)                                         # v1 on a v2-only listener
    c.sendall(pb.build_v1(("203.0.113.9", 1), ("203.0.113.1", 2)) + b"x")
    bad["proxy-invalid"].append(c)
    for reason, socks in bad.items():
        for c in socks:
            sport = c.getsockname()[1]
            assert closed_by_daemon(c), reason
            line = conn_line(d, f"{c.getsockname()[0]}:{sport}")
            assert line["route"] == "-" and unconnected(line) and line["reason"] == reason, line
            c.close()
    for c in (stall, silent):
        assert closed_by_daemon(c, 3)
        line = conn_line(d, f"127.0.0.1:{c.getsockname()[1]}")
        assert line["reason"] == "proxy-timeout" and 0.45 <= seconds(line) < 1.5, line   # probe_timeout = 0.5
        c.close()
    assert time.monotonic() - t0 >= 0.45

    assert rec.accepted == len(good)                            # no bad client ever reached the backend
    block = stats(d)
    assert closed_count(block, "-", "proxy-untrusted") == 1
    assert closed_count(block, "-", "proxy-invalid") == 4
    assert closed_count(block, "-", "proxy-timeout") == 2
    assert closed_count(block, "all", "eof") == len(good)
    assert "Traceback" not in d.log_text()


@pytest.mark.timeout(30)
def test_header_with_unix_addresses_falls_back_to_the_socket_addresses(daemon, server):
    """A v2 PROXY header with UNIX addresses has no IP to use as the client's: the spec's fallback is
    UNSPEC behaviour (the real socket addresses), not an internal error. With per-source limits on, the
    limit bookkeeping must not choke on it either."""
    rec = Recorder(server, "v1")
    port, v2port = free_port(), free_port()
    d = start(daemon, pp_listener_config(port, v2port, rec.port, max_connections_per_source=10), port)
    head = pb.build_v2("unix:/run/front.sock", "unix:/run/back.sock")
    assert pp.parse(head).family == "UNIX_STREAM"
    with client(port) as c:
        sport = c.getsockname()[1]
        assert answer(c, b"unix", head=head) == b"unix"
        assert rec.next(5).header == f"PROXY TCP4 127.0.0.1 127.0.0.1 {sport} {port}\r\n".encode()
    assert "Traceback" not in d.log_text()


@pytest.mark.timeout(40)
def test_live_fuzz_daemon_agrees_with_the_parser(daemon, server):
    """Mutated headers, each on its own connection: OK -> served with the header's addresses (or the
    socket's for LOCAL/UNSPEC/UNKNOWN), INVALID -> closed with proxy-invalid, NEED_MORE and the client
    shuts its side -> closed with proxy-invalid. The daemon never logs a traceback."""
    rec = Recorder(server, "v1")
    port, v2port = free_port(), free_port()
    d = start(daemon, pp_listener_config(port, v2port, rec.port), port)
    bases = [pb.build_v1(("192.0.2.1", 1111), ("192.0.2.2", 443)),
             pb.build_v1(("2001:db8::1", 2222), ("2001:db8::2", 443)),
             b"PROXY UNKNOWN\r\n",
             pb.build_v2(("192.0.2.3", 3333), ("192.0.2.4", 443), tlvs=[pb.tlv_alpn("h2"), pb.tlv_authority("a.b")],
                         crc=True),
             pb.build_v2(("2001:db8::3", 4444), ("2001:db8::4", 443), tlvs=[pb.tlv_noop(3)]),
             pb.build_v2(None, None, local=True),
             pb.build_v2(None, ("192.0.2.4", 443))]                 # UNSPEC

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(base=st.sampled_from(bases), edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                                         max_size=2),
           cut=st.one_of(st.none(), st.integers(1, 120)))
    def check(base, edits, cut):
        data = bytearray(base)
        for pos, value in edits:
            if pos < len(data):
                data[pos] = value
        data = bytes(data[:cut] if cut else data) + b"payload"
        expected = pp.parse(data, "any")
        with client(port) as c:
            sport = c.getsockname()[1]
            c.sendall(data)
            if expected.status is OK:
                rest = data[expected.length:]
                if not rest:
                    c.shutdown(socket.SHUT_WR)
                got = b""
                c.settimeout(5)
                while len(got) < len(rest):
                    chunk = c.recv(65536)
                    assert chunk, (data, expected)
                    got += chunk
                assert got == rest
                seen = rec.next(5)
                if expected.src is not None and expected.src.port is not None:
                    want = pb.build_v1(expected.src, expected.dst)
                else:
                    want = f"PROXY TCP4 127.0.0.1 127.0.0.1 {sport} {port}\r\n".encode()
                assert seen.header == want, (data, expected)
            else:
                if expected.status is NEED_MORE:
                    c.shutdown(socket.SHUT_WR)
                assert closed_by_daemon(c, 3), (data, expected)
                assert conn_line(d, f"127.0.0.1:{sport}")["reason"] == "proxy-invalid", data

    check()
    assert "Traceback" not in d.log_text()


# --- 4. limits --------------------------------------------------------------------------------------------
def burst(port: int, n: int, src: str = "127.0.0.1", data: bytes = b"ping") -> tuple[list, list]:
    """Open n connections at once, then send on each: (served sockets, closed sockets)."""
    socks = [client(port, src) for _ in range(n)]
    served, closed = [], []
    for s in socks:
        (served if answer(s, data) == data else closed).append(s)
    return served, closed


def close_all(*groups) -> None:
    for group in groups:
        for s in group:
            s.close()


@pytest.mark.timeout(40)
def test_global_listener_and_route_max_connections(daemon, server):
    backend = server()
    a, b = free_port(), free_port()
    cfg = config({"a": {"address": f"127.0.0.1:{a}", "max_connections": 3, "routes": "echo"},
                  "b": {"address": f"127.0.0.1:{b}", "routes": "limited, echo"}},
                 {"limited": {"probe": "http", "max_connections": 2, "backend": f"127.0.0.1:{backend.port}"},
                  "echo": {"probe": "any", "backend": f"127.0.0.1:{backend.port}"}},
                 max_connections=6)
    d = start(daemon, cfg, b)

    a_served, a_closed = burst(a, 5)
    assert (len(a_served), len(a_closed)) == (3, 2)
    assert all(unconnected(f) for f in wait_lines(d, 2, listener="a", route="-", reason="limit-listener"))

    request = b"GET /x HTTP/1.1\r\n"
    r_served, r_closed = burst(b, 3, data=request)
    assert (len(r_served), len(r_closed)) == (2, 1)
    line = wait_lines(d, 1, reason="limit-route")[0]
    assert line["client"] == f"127.0.0.1:{r_closed[0].getsockname()[1]}" and line["route"] == "limited", line
    assert unconnected(line)
    other = client(b)                                          # another route of the same listener
    assert answer(other, b"hello") == b"hello"
    assert backend.accepted == 3 + 2 + 1                       # refused ones never reached the backend

    # 6 open: the global limit; the 7th is refused at accept
    extra = client(b)
    assert closed_by_daemon(extra)
    extra.close()

    a_served.pop().close()                                     # one leaves: its listener place is free again
    wait_lines(d, 1, listener="a", route="echo")
    again = client(a)
    assert answer(again, b"again") == b"again"

    block = stats(d)
    assert closed_count(block, "-", "limit-listener") == 2
    assert closed_count(block, "limited", "limit-route") == 1
    assert closed_count(block, "-", "limit-global") == 1
    close_all(a_served, a_closed, r_served, r_closed, [other, again])


@pytest.mark.timeout(40)
def test_per_source_connections_and_sniffing(daemon, server):
    """max_connections_per_source = 5: the 6th from one address is refused while another address is served;
    max_sniffing_per_source = 3: a scanner holding 3 silent connections cannot hold a 4th."""
    backend = server()
    port, plain = free_port(), free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}", "routes": "ssh"},
                  "plain": {"address": f"127.0.0.1:{plain}", "routes": "all"}},
                 {"ssh": {"probe": "ssh", "backend": f"127.0.0.1:{backend.port}"},
                  "all": {"probe": "any", "backend": f"127.0.0.1:{backend.port}"}},
                 max_connections_per_source=5, max_sniffing_per_source=3, probe_timeout=10)
    d = start(daemon, cfg, port)
    banner = b"SSH-2.0-test\r\n"

    served, closed = burst(plain, 7, "127.0.0.5")              # probe any: no sniff stage
    assert (len(served), len(closed)) == (5, 2)
    wait_lines(d, 2, reason="limit-source")
    for c in closed:
        assert conn_line(d, f"127.0.0.5:{c.getsockname()[1]}")["reason"] == "limit-source"
    with client(plain, "127.0.0.6") as other:
        assert answer(other) == b"ping"

    accepted = lambda: int(re.search(r"^accepted=(\d+)", stats(d), re.M).group(1))
    before = accepted()
    scanner = [client(port, "127.0.0.3") for _ in range(3)]   # silent: they stay in the sniff stage
    wait_until(lambda: accepted() >= before + 3, 10, "the daemon's accept of the three silent clients", 0.05)
    t0 = time.monotonic()
    fourth = client(port, "127.0.0.3")
    assert closed_by_daemon(fourth, 3) and time.monotonic() - t0 < 2.0
    line = conn_line(d, f"127.0.0.3:{fourth.getsockname()[1]}")
    assert line["reason"] == "limit-sniffing" and seconds(line) < 0.2, line      # at once, not at probe_timeout
    with client(port, "127.0.0.4") as other:                  # another source is still let in
        time.sleep(0.1)
        assert answer(other, banner) == banner
    # a sniffing connection that decides frees its sniffing place (it still counts as a connection)
    assert answer(scanner[0], banner) == banner
    with client(port, "127.0.0.3") as late:
        assert answer(late, banner) == banner
    assert backend.accepted == 5 + 1 + 1 + 1 + 1

    block = stats(d)
    assert closed_count(block, "-", "limit-source") == 2
    assert closed_count(block, "-", "limit-sniffing") == 1
    close_all(served, closed, scanner, [fourth])


@pytest.mark.timeout(30)
def test_per_source_limit_counts_the_header_address_by_ipv6_prefix(daemon, server):
    """Behind a trusted proxy the source is the PROXY header's address, not the proxy's; IPv6 sources are
    counted per source_ipv6_prefix (/64 here)."""
    backend = server()
    port = free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}", "proxy_protocol": "v2", "trusted": "127.0.0.1"}},
                 {"all": {"probe": "any", "backend": f"127.0.0.1:{backend.port}"}},
                 max_connections_per_source=2, source_ipv6_prefix=64)
    d = start(daemon, cfg, port)

    def via_proxy(src: str) -> socket.socket:
        c = client(port)
        c.sendall(pb.build_v2((src, 1234), ("2001:db8:ffff::1", 443)))
        return c

    held = [via_proxy("2001:db8::1"), via_proxy("2001:db8::2")]            # one /64, two hosts
    assert all(answer(c) == b"ping" for c in held)
    third = via_proxy("2001:db8::3")
    assert closed_by_daemon(third)
    assert conn_line(d, "[2001:db8::3]:1234")["reason"] == "limit-source"
    others = [via_proxy("2001:db8:1::1"), via_proxy("2001:db8:2::1")]      # other /64s: the proxy itself is
    assert all(answer(c) == b"ping" for c in others)                        # not the one counted
    assert backend.accepted == 4
    close_all(held, others, [third])


@pytest.mark.timeout(30)
def test_rate_per_source(daemon, server):
    backend = server()
    port = free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}"}},
                 {"all": {"probe": "any", "backend": f"127.0.0.1:{backend.port}"}}, rate_per_source=2)
    d = start(daemon, cfg, port)
    served, closed = burst(port, 6, "127.0.0.10")
    assert (len(served), len(closed)) == (2, 4)                # the burst is the rate
    wait_lines(d, 4, reason="limit-rate")
    with client(port, "127.0.0.12") as other:                  # another source has its own bucket
        assert answer(other) == b"ping"
    time.sleep(0.6)                                            # one token back after 0.5 s
    more_served, more_closed = burst(port, 2, "127.0.0.10")
    assert (len(more_served), len(more_closed)) == (1, 1)
    assert backend.accepted == 2 + 1 + 1
    assert closed_count(stats(d), "-", "limit-rate") == 5
    close_all(served, closed, more_served, more_closed)


# --- 5. source ACLs -------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_source_acls_per_listener_and_route_before_any_backend_connect(daemon, server):
    ssh_backend, rest_backend = server(), server()
    pub, prox, only = free_port(), free_port(), free_port()
    cfg = config({"pub": {"address": f"127.0.0.1:{pub}", "deny": "127.0.0.9/32", "routes": "ssh, rest"},
                  "prox": {"address": f"127.0.0.1:{prox}", "proxy_protocol": "v1", "trusted": "127.0.0.1",
                           "deny": "198.51.100.0/24", "routes": "rest"},
                  "only": {"address": f"127.0.0.1:{only}", "allow": "127.0.0.1/32", "routes": "rest"}},
                 {"ssh": {"probe": "ssh", "allow": "127.0.0.0/30", "backend": f"127.0.0.1:{ssh_backend.port}"},
                  "rest": {"probe": "any", "deny": "127.0.0.6", "backend": f"127.0.0.1:{rest_backend.port}"}})
    d = start(daemon, cfg, pub)
    banner = b"SSH-2.0-test\r\n"

    def denied(port, src, data, route, via=None):
        with client(port, src) as c:
            c.sendall(data)
            assert closed_by_daemon(c), (port, src)
            line = conn_line(d, via or f"{src}:{c.getsockname()[1]}")
        assert line["route"] == route and line["reason"] == "denied" and unconnected(line), line

    denied(pub, "127.0.0.9", banner, "-")                      # the listener's deny
    with client(pub, "127.0.0.9") as c:                        # ... whatever the client sends
        assert closed_by_daemon(c)
    assert (ssh_backend.accepted, rest_backend.accepted) == (0, 0)
    with client(pub) as c:
        assert answer(c, banner) == banner                     # 127.0.0.1 is in ssh's allow list
    denied(pub, "127.0.0.5", banner, "ssh")                    # ... 127.0.0.5 is not
    denied(pub, "127.0.0.6", b"hello", "rest")                 # rest's deny
    with client(pub, "127.0.0.5") as c:
        assert answer(c, b"hello") == b"hello"
    # behind a PROXY header the header's address is the one checked
    denied(prox, "127.0.0.1", pb.build_v1(("198.51.100.7", 7777), ("127.0.0.1", prox)) + b"x", "-",
           via="198.51.100.7:7777")
    with client(prox) as c:
        assert answer(c, b"fine", head=pb.build_v1(("203.0.113.7", 7777), ("127.0.0.1", prox))) == b"fine"
    denied(only, "127.0.0.2", b"hello", "-")                   # not in the listener's allow list
    with client(only) as c:
        assert answer(c, b"hello") == b"hello"
    assert (ssh_backend.accepted, rest_backend.accepted) == (1, 3)   # the denied never reached a backend
    block = stats(d)
    assert closed_count(block, "-", "denied") == 4
    assert closed_count(block, "ssh", "denied") == 1 and closed_count(block, "rest", "denied") == 1


# --- 6. transparent mode ------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_transparent_backend_connection_from_the_client_address(daemon, server):
    backend, backend6 = PeerServer(server), PeerServer(server, "::1")
    port, prox, six = free_port(), free_port(), free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}, [::1]:{port}", "routes": "tp"},
                  "prox": {"address": f"127.0.0.1:{prox}", "proxy_protocol": "v2", "trusted": "127.0.0.1",
                           "routes": "tp"},
                  "six": {"address": f"[::1]:{six}", "routes": "tp6"}},
                 {"tp": {"probe": "any", "transparent": "yes", "backend": f"127.0.0.1:{backend.port}"},
                  "tp6": {"probe": "any", "transparent": "yes", "backend": f"[::1]:{backend6.port}"}})
    d = start(daemon, cfg, port)
    with client(port, "127.0.0.8") as c:
        assert answer(c, b"from .8") == b"from .8"
        sport = c.getsockname()[1]
    peer = backend.peers.get(timeout=5)
    assert peer[0] == "127.0.0.8" and peer[1] != sport         # the client's address, a port of its own
    with client(six, "::1", "::1") as c:                       # IPv6 (IPV6_TRANSPARENT)
        assert answer(c, b"v6") == b"v6"
    assert backend6.peers.get(timeout=5)[0] == "::1"
    # behind a PROXY header: the header's address is bound
    with client(prox) as c:
        assert answer(c, b"hdr", head=pb.build_v2(("127.0.0.66", 6666), ("127.0.0.1", prox))) == b"hdr"
    assert backend.peers.get(timeout=5)[0] == "127.0.0.66"
    # an IPv6 client cannot be the source of an IPv4 connection
    with client(port, "::1", "::1") as c:
        c.sendall(b"v6")
        assert closed_by_daemon(c)
        line = conn_line(d, f"[::1]:{c.getsockname()[1]}")
    assert line["route"] == "tp" and line["reason"] == "transparent-family", line
    assert backend.server.accepted == 2


@pytest.mark.timeout(30)
def test_transparent_without_capabilities_is_a_clear_reason(daemon, server):
    """Regression: IP_TRANSPARENT refused (EPERM) was logged as an unexpected error."""
    backend = PeerServer(server)
    port = free_port()
    cfg = config({"main": {"address": f"127.0.0.1:{port}", "routes": "tp"}},
                 {"tp": {"probe": "any", "transparent": "yes", "backend": f"127.0.0.1:{backend.port}"}})
    d = daemon().start(cfg, wait=port, wrap=["setpriv", "--bounding-set", "-net_admin,-net_raw"])
    with client(port, "127.0.0.8") as c:
        c.sendall(b"x")
        assert closed_by_daemon(c)
        line = conn_line(d, f"127.0.0.8:{c.getsockname()[1]}")
    assert line["reason"] == "transparent-denied", line
    assert "Traceback" not in d.log_text()
    assert backend.server.accepted == 0


# --- --check ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_check_messages_for_bad_values(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text(config(
        {"main": {"address": "127.0.0.1:4430", "proxy_protocol": "v2", "trusted": "10.0.0.1/8",
                  "allow": "nonsense", "deny": "10.0.0.0/8"},
         "bare": {"address": "127.0.0.1:4431", "proxy_protocol": "any"},
         "stray": {"address": "127.0.0.1:4432", "trusted": "127.0.0.1"},
         "odd": {"address": "127.0.0.1:4433", "proxy_protocol": "v3", "trusted": "127.0.0.1",
                 "max_connections": -1}},
        {"r1": {"probe": "any", "send_proxy": "v1", "send_proxy_crc": "yes", "deny": "300.1.1.1/32",
                "backend": "127.0.0.1:1"},
         "r2": {"probe": "ssh", "send_proxy_crc": "yes", "allow": "fe80::1%eth0", "backend": "127.0.0.1:1"},
         "r3": {"probe": "ssh", "transparent": "yes", "send_proxy": "v9", "backend": "unix:/run/x.sock"}},
        max_connections_per_source=-1, rate_per_source="fast"))
    r = subprocess.run([sys.executable, "-m", "epollmux", "-c", str(path), "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    lines = set((r.stdout + r.stderr).splitlines())
    f = str(path)
    for want in [
        f"{f}: [listen.main] trusted: '10.0.0.1/8': host bits set (did you mean 10.0.0.0/8?)",
        f"{f}: [listen.main] allow: 'nonsense': not an address or address/prefix",
        f"{f}: [listen.bare] trusted: required with proxy_protocol: the sources allowed to send a header",
        f"{f}: [listen.stray] trusted: only means something with proxy_protocol",
        f"{f}: [routes.r1] send_proxy_crc: needs send_proxy = v2",
        f"{f}: [routes.r1] deny: '300.1.1.1/32': not an address or address/prefix",
        f"{f}: [routes.r2] send_proxy_crc: needs send_proxy = v2",
        f"{f}: [routes.r2] allow: 'fe80::1%eth0': scoped addresses (%zone) are not allowed in address lists",
        f"{f}: [routes.r3] transparent: needs a TCP backend",
    ]:
        assert want in lines, f"missing {want!r} in:\n" + "\n".join(sorted(lines))
    for section, key in [("listen.odd", "proxy_protocol"), ("listen.odd", "max_connections"),
                         ("global", "max_connections_per_source"), ("global", "rate_per_source"),
                         ("routes.r3", "send_proxy")]:
        assert any(line.startswith(f"{f}: [{section}] {key}: ") for line in lines), (section, key, lines)
    assert all(line.startswith(f"{f}: [") for line in lines), lines


@pytest.mark.timeout(30)
def test_check_warns_when_transparent_routes_lack_the_capability(tmp_path):
    path = tmp_path / "tp.conf"
    path.write_text(config({"main": {"address": "127.0.0.1:4430"}},
                           {"tp": {"probe": "any", "transparent": "yes", "backend": "127.0.0.1:1"}}))
    argv = [sys.executable, "-m", "epollmux", "-c", str(path), "--check"]
    as_root = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert as_root.returncode == 0 and "warning" not in as_root.stderr, as_root
    drop = ["-net_admin,-net_raw"] * 2
    without = subprocess.run([need("setpriv"), "--bounding-set", drop[0], "--inh-caps", drop[1], *argv], cwd=REPO,
                             capture_output=True, text=True, timeout=30)
    assert without.returncode == 0, without
    assert f"{path}: warning: [routes] transparent: tp need CAP_NET_ADMIN or CAP_NET_RAW" in without.stderr, without
