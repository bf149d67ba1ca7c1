"""Behaviour parity with sslh, through a real daemon started from config files in sslh's own format.

Each backend is an echo server that first writes `<tag>: ` (sslh's test echosrv with --prefix), so a client
sees which backend got it and that its bytes came back unchanged. Payloads are the ones sslh's test suite
sends, each whole and one byte every 10 ms.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.certs import make_ca
from support.daemon import REPO
from support.net import connect, free_port, listening, Server
from support.hello_builder import build_client_hello
from support.peers import need, openvpn_keys, tls_server_block
from support.probe_fixtures import FIXTURES

SSLH_FIXTURES = REPO / "tests" / "fixtures" / "sslh"
ADB = b"CNXN" + b"\x00" * 20 + b"host::features=shell_v2"
PAYLOADS = {                # sslh's t_old samples (openvpn: a real client's, as epollmux checks the opcode)
    "ssh": b"SSH-2.0 tester\r\n",
    "socks5": b"\x05\x04\x01\x02\x03\x04",
    "http": b"GET index.html HTTP/1.1\r\n",
    "tinc": b"0 hello\n",
    "syslog": b"<42> My syslog message\n",
    "adb": ADB,
    "xmpp": b"<?xml version='1.0'?><stream:stream to='jabber.example.org' xmlns='jabber:client'>",
    "openvpn": FIXTURES["openvpn_tcp"].data,
    "tls": build_client_hello(sni="www.example.org"),
    # an RDP client's X.224 connection request in its TPKT (sslh's probe: 0x03 and the TPKT length)
    "msrdp": b"\x03\x00\x00\x13\x0e\xe0\x00\x00\x00\x00\x00\x01\x00\x08\x00\x03\x00\x00\x00",
}


class Tagged:
    """Echo backend writing `<tag>: ` first; remembers what each connection sent."""

    def __init__(self, tag: str):
        self.tag = tag
        self.received: list[bytes] = []
        self.peers: list[tuple] = []
        self.server = Server(self._handle)
        self.port = self.server.port

    def _handle(self, sock: socket.socket) -> None:
        got = bytearray()
        self.received.append(got)
        self.peers.append(sock.getpeername())
        sock.sendall(f"{self.tag}: ".encode())
        while data := sock.recv(65536):
            got += data
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


@pytest.fixture
def sslh_daemon(daemon, tmp_path):
    """Start epollmux on a fixture file (ports filled in); returns (listen port, {tag: Tagged})."""
    backends: dict[str, Tagged] = {}

    def start(name: str, extra: list[str] = (), skip: tuple[str, ...] = ()):
        text = (SSLH_FIXTURES / name).read_text()
        port = free_port()
        for tag in sorted(set(re.findall(r"@(\w+)@", text)) - {"LISTEN"}):
            if tag in skip:
                text = text.replace(f"@{tag}@", str(free_port()))   # nothing listens there
                continue
            backends[tag] = Tagged(tag)
            text = text.replace(f"@{tag}@", str(backends[tag].port))
        path = tmp_path / name
        path.write_text(text.replace("@LISTEN@", str(port)))
        daemon().start(args=["-F", str(path), "-f", *extra], wait=port)
        return port, backends

    yield start
    for b in backends.values():
        b.server.close()


def exchange(port: int, chunks: list[bytes], expect: int, timeout: float = 10.0) -> bytes:
    """Send the chunks (10 ms apart when more than one), read until `expect` bytes or EOF."""
    with connect(port, timeout=timeout) as s:
        for i, chunk in enumerate(chunks):
            s.sendall(chunk)
            if len(chunks) > 1 and i < len(chunks) - 1:
                time.sleep(0.01)    # sslh's byte-by-byte test pace: what is checked is the route, not timing
        got = b""
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            got += data
        return got


def assert_routed(port: int, payload: bytes, tag: str, bytewise: bool) -> None:
    chunks = [payload[i:i + 1] for i in range(len(payload))] if bytewise else [payload]
    want = f"{tag}: ".encode() + payload
    assert exchange(port, chunks, len(want)) == want


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_basic_config_routes_every_probe(sslh_daemon, bytewise):
    port, backends = sslh_daemon("basic.cfg")
    for tag, payload in PAYLOADS.items():
        assert_routed(port, payload, tag, bytewise)
        assert bytes(backends[tag].received[-1]) == payload
    assert_routed(port, b"\x00\x01garbage that no probe knows", "anyprot", bytewise)


def test_sni_alpn_with_built_hellos(sslh_daemon):
    port, _ = sslh_daemon("sni_alpn.cfg")
    cases = [(("a.example.net", ["h2"]), "tls_both"), (("a.example.net", ["http/1.1"]), "tls_alpn"),
             (("www.example.org", []), "tls_sni"), (("MAIL.example.org", ["h2"]), "tls_sni"),
             ((None, ["xmpp-client"]), "tls_alpn"), (("other.example.com", ["h2"]), "tls_any"),
             ((None, []), "tls_any")]
    for (sni, alpn), tag in cases:
        assert_routed(port, build_client_hello(sni=sni, alpn=alpn), tag, bytewise=False)
    assert_routed(port, build_client_hello(sni="b.example.net", alpn=["h2"]), "tls_both", bytewise=True)


@pytest.mark.parametrize("sni, alpn, tag", [
    ("a.example.net", "h2", "tls_both"), ("a.example.net", "http/1.1", "tls_alpn"),
    ("www.example.org", None, "tls_sni"), ("mail.example.org", "h2,http/1.1", "tls_sni"),
    (None, "xmpp-client", "tls_alpn"), ("nowhere.example.com", "h2", "tls_any"), (None, None, "tls_any"),
])
def test_sni_alpn_with_openssl_s_client(sslh_daemon, sni, alpn, tag):
    openssl = shutil.which("openssl") or pytest.skip("openssl not installed")
    port, backends = sslh_daemon("sni_alpn.cfg")
    cmd = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-noservername"] if sni is None else \
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni]
    if alpn:
        cmd += ["-alpn", alpn]
    subprocess.run(cmd, input=b"", capture_output=True, timeout=20)   # fails: the backend echoes, no TLS
    hellos = [bytes(r) for b in backends.values() for r in b.received]
    assert len(hellos) == 1 and len(backends[tag].received) == 1, {t: len(b.received) for t, b in backends.items()}
    hello = bytes(backends[tag].received[0])
    assert hello[:1] == b"\x16" and (sni is None or sni.encode() in hello)


def test_regex_minlength_and_escapes(sslh_daemon):
    port, _ = sslh_daemon("regex.cfg")
    assert_routed(port, b"fooo", "regex", bytewise=False)
    assert_routed(port, b"fooo and more", "regex", bytewise=True)
    assert_routed(port, b"Q050", "regex_bytes", bytewise=False)
    assert_routed(port, b"\xc3\x00\x00\x01", "regex_bytes", bytewise=False)
    # "foo" is shorter than minlength: sslh waits, then the timeout sends it to on_timeout's protocol
    started = time.monotonic()
    assert exchange(port, [b"foo"], len(b"ssh: foo")) == b"ssh: foo"
    assert time.monotonic() - started >= 0.9


def test_proxy_protocol_in_and_out(sslh_daemon):
    port, backends = sslh_daemon("proxy.cfg")
    header = b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\n"
    with connect(port) as s:
        s.sendall(header + b"SSH-2.0 tester\r\n")
        got = b""
        while not got.endswith(b"tester\r\n"):
            got += s.recv(4096) or pytest.fail(f"EOF after {got!r}")
    assert got == b"ssh: " + header + b"SSH-2.0 tester\r\n"   # proxyprotocol: 1 sends v1 made from it
    assert exchange(port, [header + PAYLOADS["tinc"]], 14) == b"tinc: " + PAYLOADS["tinc"]   # 0: none
    got = exchange(port, [header + PAYLOADS["http"]], 6 + 28 + len(PAYLOADS["http"]))
    assert got.startswith(b"http: \r\n\r\n\x00\r\nQUIT\n") and got.endswith(PAYLOADS["http"])   # 2: v2


def test_half_started_tls_does_not_block_an_ssh_client(sslh_daemon):
    port, _ = sslh_daemon("basic.cfg")
    hello = PAYLOADS["tls"]
    with connect(port) as slow:
        slow.sendall(hello[:20])                   # half a ClientHello: the tls probe waits
        assert_routed(port, PAYLOADS["ssh"], "ssh", bytewise=False)
        slow.sendall(hello[20:])
        want = b"tls: " + hello
        got = b""
        while len(got) < len(want):
            got += slow.recv(65536) or pytest.fail("EOF")
        assert got == want


def test_connect_then_close_reaches_no_backend(sslh_daemon):
    port, backends = sslh_daemon("basic.cfg")
    for _ in range(5):
        connect(port).close()
    assert_routed(port, PAYLOADS["ssh"], "ssh", bytewise=False)     # the daemon still serves
    assert all(len(b.received) == (1 if t == "ssh" else 0) for t, b in backends.items())


def test_unreachable_backend_closes_only_that_client(sslh_daemon):
    port, _ = sslh_daemon("basic.cfg", skip=("http",))
    with connect(port) as s:
        s.sendall(PAYLOADS["http"])
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass        # closed with the request unread: a reset is how that close looks
    assert_routed(port, PAYLOADS["ssh"], "ssh", bytewise=False)


def test_transparent_connects_from_the_client_address(sslh_daemon):
    if os.geteuid() != 0:
        pytest.skip("transparent mode needs CAP_NET_ADMIN")
    port, backends = sslh_daemon("transparent.cfg")
    with connect(port) as s:
        s.sendall(PAYLOADS["ssh"])
        assert s.recv(5) == b"ssh: "
        # on loopback the client's port is taken by the client itself, so only its address is kept (as in
        # sslh); test_transparent_netns drives a real remote client
        assert backends["ssh"].peers[-1][0] == s.getsockname()[0]


def test_debian_defaults_with_real_ssh_curl_openvpn(daemon, sshd, nginx, openvpn, tmp_path):
    """Debian sslh 1.20's DAEMON_OPTS, --foreground as its sslh.service adds, the binary name changed;
    an --openvpn shortcut added as sslh users do."""
    server = sshd()
    cert = make_ca(tmp_path / "ca").issue(["localhost"])
    web = free_port()
    nginx(tls_server_block(web, cert.chain, cert.key, "served over tls"), [web])
    vpn = free_port()
    keys = openvpn_keys(tmp_path / "ovpn")
    openvpn("server", vpn, keys)
    port = free_port()
    opts = (f"--user {server.user} --listen 127.0.0.1:{port} --ssh 127.0.0.1:{server.port} "
            f"--ssl 127.0.0.1:{web} --pidfile {tmp_path / 'sslh.pid'} --openvpn 127.0.0.1:{vpn}")
    d = daemon().start(args=["--foreground", *opts.split()], wait=port)
    assert (tmp_path / "sslh.pid").read_text().strip() == str(d.pid)
    r = subprocess.run(server.ssh_argv(port, "echo through-epollmux"), capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and r.stdout.strip() == "through-epollmux", r.stderr
    r = subprocess.run([need("curl"), "-sk", f"https://localhost:{port}/"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "served over tls", r.stderr
    openvpn("client", port, keys).wait_ready()


def test_inetd_serves_the_connection_on_stdin(tmp_path):
    backend = Tagged("ssh")
    cfg = tmp_path / "inetd.cfg"
    cfg.write_text(f'timeout: 2;\nprotocols: ( {{ name: "ssh"; host: "127.0.0.1"; port: "{backend.port}"; }} );\n')
    with socket.create_server(("127.0.0.1", 0)) as lst:
        client = socket.create_connection(lst.getsockname(), timeout=10)
        conn, _ = lst.accept()
    with client, conn:
        proc = subprocess.Popen([os.sys.executable, "-m", "epollmux", "-i", "-F", str(cfg)], cwd=REPO,
                                stdin=conn, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        conn.close()
        client.sendall(PAYLOADS["ssh"])
        client.shutdown(socket.SHUT_WR)
        got = b""
        while data := client.recv(4096):
            got += data
        assert proc.wait(20) == 0, proc.stderr.read()
    assert got == b"ssh: " + PAYLOADS["ssh"]
    backend.server.close()


def test_socket_activation_serves_systemds_sockets_instead_of_listen(daemon, tmp_path):
    """sslh.socket: the sockets systemd passes are served and the config's listen entries not bound."""
    activate = shutil.which("systemd-socket-activate") or pytest.skip("systemd-socket-activate not installed")
    backend = Tagged("ssh")
    port, configured = free_port(), free_port()
    cfg = tmp_path / "sslh.cfg"
    cfg.write_text(f'listen: ( {{ host: "127.0.0.1"; port: "{configured}"; }} );\n'
                   f'protocols: ( {{ name: "ssh"; host: "127.0.0.1"; port: "{backend.port}"; }} );\n')
    d = daemon().start(args=["--foreground", "-F", str(cfg)], wrap=[activate, "-l", f"127.0.0.1:{port}"],
                       wait=port)
    assert_routed(port, PAYLOADS["ssh"], "ssh", bytewise=False)
    d.wait_log("ready")
    assert "not bound: systemd passes 1 socket" in d.log_text()
    assert not listening(configured)
    backend.server.close()


def test_sighup_rereads_the_sslh_file_with_the_same_options(daemon, tmp_path):
    first, second = Tagged("ssh"), Tagged("anyprot")
    port = free_port()
    cfg = tmp_path / "sslh.cfg"
    cfg.write_text(f'protocols: ( {{ name: "ssh"; host: "127.0.0.1"; port: "{first.port}"; }} );\n')
    d = daemon().start(args=["-f", "-p", f"127.0.0.1:{port}", "-F", str(cfg)], wait=port)
    assert_routed(port, PAYLOADS["http"], "ssh", bytewise=False)      # all NEXT: the last protocol
    cfg.write_text(f'protocols: ( {{ name: "ssh"; host: "127.0.0.1"; port: "{first.port}"; }},\n'
                   f'  {{ name: "anyprot"; host: "127.0.0.1"; port: "{second.port}"; }} );\n')
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log("reloaded: generation 2")
    assert_routed(port, PAYLOADS["http"], "anyprot", bytewise=False)
    assert_routed(port, PAYLOADS["ssh"], "ssh", bytewise=False)
    first.server.close()
    second.server.close()


def test_udp_entries_route_datagrams_beside_tcp_on_one_port(daemon, tmp_path):
    """sslh-select's is_udp entries: TCP ssh and UDP openvpn/wireguard on one port number; a datagram no UDP
    probe recognises goes to the last is_udp protocol, as in sslh; each reply reaches its own client."""
    from support.udp import UdpClient, UdpEcho, free_port_both
    from support.udp_fixtures import UDP_FIXTURES
    ssh = Tagged("ssh")
    vpn, wg = UdpEcho(b"vpn:"), UdpEcho(b"wg:")
    port = free_port_both()
    path = tmp_path / "udp.cfg"
    path.write_text(f"""
        timeout: 2;
        listen: ( {{ host: "127.0.0.1"; port: "{port}"; }},
                  {{ host: "127.0.0.1"; port: "{port}"; is_udp: true; }} );
        protocols: (
          {{ name: "ssh"; host: "127.0.0.1"; port: "{ssh.port}"; }},
          {{ name: "openvpn"; host: "127.0.0.1"; port: "{vpn.port}"; is_udp: true; udp_timeout: 20; }},
          {{ name: "wireguard"; host: "127.0.0.1"; port: "{wg.port}"; is_udp: true; }}
        );""")
    clients = []
    try:
        daemon().start(args=["-F", str(path), "-f"], wait=port)
        assert_routed(port, PAYLOADS["ssh"], "ssh", bytewise=False)
        for fixture, tag in (("openvpn_udp", b"vpn:"), ("wireguard_initiation", b"wg:"), (None, b"wg:")):
            first = UDP_FIXTURES[fixture].datagrams[0] if fixture else b"\x99 no probe knows this"
            client = UdpClient(port)
            clients.append(client)
            assert client.ask(first) == tag + first
            assert client.ask(b"second datagram") == tag + b"second datagram"    # the flow stays routed
        assert assert_routed(port, PAYLOADS["ssh"], "ssh", bytewise=True) is None
    finally:
        for client in clients:
            client.close()
        ssh.server.close()
        vpn.close()
        wg.close()
