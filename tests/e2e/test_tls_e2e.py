"""TLS termination end to end: real clients and servers through one epollmux port.

curl and `openssl s_client` through terminating routes to plaintext nginx (page, 32 MiB byte-exact, ALPN),
a certificate per SNI, SSH inside TLS to a real sshd (`inner_routes`), client certificates (mTLS),
re-encryption to a verified nginx TLS backend (and refusal of an untrusted one), headless Chromium,
hostile TLS input (truncation, garbage, plaintext, stalls) beside a good client, RSS over 10,000 bad
handshakes, and the `--check` messages for bad certificate files.
Only 127.0.0.1; every process is ended by its PID (the fixtures of conftest.py and peers.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from support.daemon import closed_count, make_config, REPO, stats, tree_rss_kib
from support.net import assert_echoes, connect, echo, free_port, recv_all
from support.peers import need, text_server_block, tls_server_block

CLIENT_ENV = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
CHROMIUM_COPY = Path("/tmp/epollmux-chromium.png")


# --- configuration and daemon helpers ----------------------------------------------------------------
def config(listeners: dict[str, tuple[int, list[str]]], routes: dict[str, dict], **glob) -> str:
    """make_config with listeners {name: (port, route names)}, one worker and info logging."""
    return make_config({name: {"address": f"127.0.0.1:{port}", "routes": ", ".join(names)}
                        for name, (port, names) in listeners.items()},
                       routes, **{"workers": 1, "log_level": "info", **glob})


def terminating(leaf, backend: int | None, probe: str = "tls", **opts) -> dict:
    """Route options that terminate TLS with `leaf` (chain + key) and forward to 127.0.0.1:backend
    (None: no backend, for a route whose inner_routes decide)."""
    target = {} if backend is None else {"backend": f"127.0.0.1:{backend}"}
    return {"probe": probe, "tls_cert": leaf.chain, "tls_key": leaf.key, **target, **opts}


def start(daemon, cfg: str, port: int):
    return daemon().start(cfg, ready=True)


def log_lines(text: str, route: str) -> list[str]:
    """The connection log lines of one route (route=NAME exactly, or OUTER>INNER)."""
    return [line for line in text.splitlines() if f" route={route} " in line]


# --- client helpers ----------------------------------------------------------------------------------
def curl(url: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """curl -sS; stdout ends with a line `<http_code> <http_version>`."""
    return subprocess.run([need("curl"), "-sS", "--max-time", str(int(timeout)), "-w",
                           "\n%{http_code} %{http_version}", *args, url],
                          capture_output=True, text=True, timeout=timeout + 10, env=CLIENT_ENV)


def curl_ok(url: str, *args: str) -> tuple[str, str]:
    """(body, HTTP version) of a request that must succeed with 200."""
    r = curl(url, *args)
    assert r.returncode == 0, f"curl {url}: {r.stderr}"
    body, _, tail = r.stdout.rpartition("\n")
    code, version = tail.split()
    assert code == "200", r.stdout
    return body.strip(), version


def resolve(name: str, port: int) -> list[str]:
    return ["--resolve", f"{name}:{port}:127.0.0.1"]


def s_client(port: int, name: str, ca: Path, *args: str, send: bytes = b"") -> subprocess.CompletedProcess:
    """openssl s_client to 127.0.0.1:port with SNI name, verifying the chain and the host name."""
    return subprocess.run([need("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
                           "-CAfile", str(ca), "-verify_return_error", "-verify_hostname", name, "-ign_eof", *args],
                          input=send, capture_output=True, timeout=30)


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def tls_connect(port: int, name: str, ca: Path) -> ssl.SSLSocket:
    return client_context(ca).wrap_socket(connect(port), server_hostname=name)


class HandClient:
    """A TLS client driven by hand over a raw socket (MemoryBIOs), so a test can cut or spoil any record."""

    def __init__(self, port: int, name: str, ca: Path):
        self.sock = connect(port)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(ca).wrap_bio(self.incoming, self.outgoing, server_hostname=name)

    def hello(self) -> bytes:
        """The ClientHello (not sent)."""
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def handshake(self) -> bytes:
        """Send the ClientHello, take the server's flight; return the client's last flight, NOT sent."""
        self.sock.sendall(self.hello())
        while True:
            data = self.sock.recv(65536)
            assert data, "server closed during the handshake"
            self.incoming.write(data)
            try:
                self.tls.do_handshake()
                return self.outgoing.read()
            except ssl.SSLWantReadError:
                pending = self.outgoing.read()
                if pending:
                    self.sock.sendall(pending)

    def record(self, plaintext: bytes) -> bytes:
        self.tls.write(plaintext)
        return self.outgoing.read()

    def read(self, size: int) -> bytes:
        """At least one byte of plaintext (at most size)."""
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                assert data, "closed before any plaintext"
                self.incoming.write(data)

    def close_notify(self) -> bytes:
        """Our close_notify, to send. (ssl's unwrap() also tries to read the peer's and may complain of
        application data still unread: the alert is in the BIO all the same.)"""
        try:
            self.tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        return self.outgoing.read()

    def closed_by_peer(self, timeout: float = 10.0) -> bytes:
        """Everything the daemon still sends, until it closes; fails if it does not close in time."""
        self.sock.settimeout(timeout)
        try:
            return recv_all(self.sock)
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.sock.close()


# --- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def leaves(tls_ca):
    return {name: tls_ca.issue(f"{name}.example") for name in ("a", "b", "h2", "ssh", "backend", "client")}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- curl and openssl s_client to plaintext nginx: page, 32 MiB, ALPN ----------------------------------
@pytest.mark.timeout(90)
def test_curl_and_s_client_through_a_terminating_route_to_plain_nginx(daemon, nginx, leaves, tls_ca,
                                                                       tmp_path):
    """`web` advertises http/1.1 only and forwards to plain nginx.

    `mix` advertises h2 and http/1.1. nginx 1.22 speaks h2 in cleartext only with prior knowledge, on a
    port that then refuses HTTP/1.1 (`listen ... http2` without ssl): one backend cannot take both. So
    `mix` sniffs the decrypted stream (inner_routes): the h2 preface goes to the h2c nginx, HTTP/1.1 to the
    plain one, and curl's `%{http_version}` shows what ALPN chose.
    """
    www = tmp_path / "www"
    www.mkdir()
    page = "<html><body>served by plain nginx</body></html>\n"
    (www / "index.html").write_text(page)
    blob = os.urandom(32 << 20)
    (www / "blob.bin").write_bytes(blob)
    web, h2c = free_port(), free_port()
    nginx(f"server {{ listen 127.0.0.1:{web}; root {www}; }}\n"
          f"server {{ listen 127.0.0.1:{h2c} http2; location / {{ default_type text/plain; "
          f"return 200 \"served by h2c nginx\\n\"; }} }}\n", [web, h2c])
    port = free_port()
    a, h2 = leaves["a"], leaves["h2"]
    cfg = config({"main": (port, ["web", "mix"])}, {
        "web": terminating(a, web, sni="a.example", tls_alpn="http/1.1"),
        "mix": terminating(h2, None, sni="h2.example", tls_alpn="h2, http/1.1", inner_routes="h2c, h1"),
        "h2c": {"probe": "regex", "regex": '"^PRI "', "min_length": 4, "backend": f"127.0.0.1:{h2c}"},
        "h1": {"probe": "http", "backend": f"127.0.0.1:{web}"},
    })
    d = start(daemon, cfg, port)
    ca = ["--cacert", str(tls_ca.cert)]

    url = f"https://a.example:{port}"
    assert curl_ok(f"{url}/", *resolve("a.example", port), *ca) == (page.strip(), "1.1")
    # curl offers h2 first; the route advertises http/1.1 only, so ALPN settles on 1.1
    assert curl_ok(f"{url}/", "--http2", *resolve("a.example", port), *ca) == (page.strip(), "1.1")

    got = tmp_path / "got.bin"
    t0 = time.monotonic()
    r = curl(f"{url}/blob.bin", "-o", str(got), *resolve("a.example", port), *ca, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 0 and r.stdout.split() == ["200", "1.1"], (r.stdout, r.stderr)
    assert got.stat().st_size == len(blob)
    assert sha256(got.read_bytes()) == sha256(blob)
    print(f"32 MiB through TLS termination (curl, loopback): {took:.2f} s, {32 / took:.0f} MiB/s")

    r = s_client(port, "a.example", tls_ca.cert, "-alpn", "h2,http/1.1",
                 send=b"GET / HTTP/1.0\r\nHost: a.example\r\n\r\n")
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert "ALPN protocol: http/1.1" in out
    assert "Verify return code: 0 (ok)" in out
    assert "HTTP/1.1 200 OK" in out and page.strip() in out

    host = resolve("h2.example", port)
    assert curl_ok(f"https://h2.example:{port}/", "--http2", *host, *ca) == ("served by h2c nginx", "2")
    assert curl_ok(f"https://h2.example:{port}/", "--http1.1", *host, *ca) == (page.strip(), "1.1")

    text = d.wait_log(" route=mix>", count=2)
    web_lines = log_lines(text, "web")
    assert len(web_lines) == 4, web_lines
    assert all("alpn=http/1.1" in line and "reason=eof" in line for line in web_lines), web_lines
    assert max(int(re.search(r" down=(\d+)", line).group(1)) for line in web_lines) > len(blob)
    [h2_line], [h1_line] = log_lines(text, "mix>h2c"), log_lines(text, "mix>h1")
    assert "alpn=h2" in h2_line and "tls=TLSv1.3" in h2_line, h2_line
    assert "alpn=http/1.1" in h1_line, h1_line


# --- a certificate per SNI ------------------------------------------------------------------------------
PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@pytest.mark.timeout(60)
def test_two_terminating_routes_on_one_port_present_their_own_certificates(daemon, nginx, leaves,
                                                                           tls_ca):
    ports = {"a": free_port(), "b": free_port()}
    nginx(text_server_block(ports["a"], "backend-a") + text_server_block(ports["b"], "backend-b"),
          list(ports.values()))
    port = free_port()
    cfg = config({"main": (port, ["a", "b"])},
                 {n: terminating(leaves[n], ports[n], sni=f"{n}.example") for n in ("a", "b")})
    d = start(daemon, cfg, port)
    for n, other in (("a", "b"), ("b", "a")):
        name = f"{n}.example"
        r = s_client(port, name, tls_ca.cert, send=f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0, out + r.stderr.decode(errors="replace")
        assert f"subject=CN = {name}" in out
        assert "Verify return code: 0 (ok)" in out              # chain and host name (-verify_hostname)
        presented = PEM_RE.search(r.stdout).group(0)
        assert presented == PEM_RE.search(leaves[n].cert.read_bytes()).group(0)
        assert presented != PEM_RE.search(leaves[other].cert.read_bytes()).group(0)
        san = subprocess.run([need("openssl"), "x509", "-noout", "-ext", "subjectAltName"], input=presented,
                             capture_output=True, timeout=30).stdout.decode()
        assert f"DNS:{name}" in san and f"DNS:{other}.example" not in san
        assert f"backend-{n}" in out                            # and each route reaches its own backend
    # a name no route claims: nothing on this listener matches, so the client is closed unserved
    r = s_client(port, "c.example", tls_ca.cert)
    assert r.returncode != 0 and b"BEGIN CERTIFICATE" not in r.stdout
    d.wait_log("reason=no-route")


# --- SSH inside TLS --------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_ssh_inside_tls_reaches_a_real_sshd(daemon, sshd, leaves, tls_ca, tmp_path):
    server = sshd()
    port = free_port()
    cfg = config({"main": (port, ["tunnel"])}, {
        "tunnel": terminating(leaves["ssh"], None, sni="ssh.example", inner_routes="ssh_inner"),
        "ssh_inner": {"probe": "ssh", "backend": f"127.0.0.1:{server.port}"},
    })
    d = start(daemon, cfg, port)
    proxy = (f"ProxyCommand={need('openssl')} s_client -quiet -connect 127.0.0.1:{port} -servername ssh.example "
             f"-CAfile {tls_ca.cert} -verify_return_error -verify_hostname ssh.example")

    def ssh(command: str, **kw) -> subprocess.CompletedProcess:
        argv = server.ssh_argv(port, command)
        return subprocess.run([argv[0], "-o", proxy, *argv[1:]], capture_output=True, timeout=30, **kw)

    r = ssh("echo inside-tls; id -un", stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.decode().split() == ["inside-tls", server.user]

    blob = os.urandom(2 << 20)
    r = ssh("sha256sum", input=blob)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.decode().split()[0] == sha256(blob)

    # ssh sends SIGHUP to its ProxyCommand on exit, so s_client dies without answering the daemon's
    # close_notify: those sessions end tls-truncated, or reset when the kernel still held unread bytes
    # for s_client (the client's doing; with a ProxyCommand that survives the SIGHUP they end eof).
    # A client that closes cleanly is checked below.
    text = d.wait_log(" route=tunnel>ssh_inner ", count=2)
    lines = log_lines(text, "tunnel>ssh_inner")
    assert all(re.search(r"reason=(eof|tls-truncated|reset) .*tls=TLSv1.3", line) for line in lines), lines
    assert int(re.search(r" up=(\d+)", lines[1]).group(1)) > len(blob)
    assert server.log_path.read_text().count("Accepted publickey for") == 2

    client = HandClient(port, "ssh.example", tls_ca.cert)     # banner out, banner in, then close_notify
    client.sock.sendall(client.handshake() + client.record(b"SSH-2.0-epollmux_test\r\n"))
    assert client.read(4).startswith(b"SSH-")
    client.sock.sendall(client.close_notify())
    client.closed_by_peer()                          # sshd saw EOF and left, so the daemon closes
    client.close()
    line = log_lines(d.wait_log(" route=tunnel>ssh_inner ", count=3), "tunnel>ssh_inner")[2]
    assert "reason=eof" in line, line


# --- mTLS ---------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_client_certificates_are_required_and_verified(daemon, nginx, leaves, tls_ca,
                                                       make_ca_factory):
    web = free_port()
    nginx(text_server_block(web, "mtls-ok"), [web])
    port = free_port()
    cfg = config({"main": (port, ["mtls"])},
                 {"mtls": terminating(leaves["a"], web, sni="a.example", tls_client_ca=tls_ca.cert)})
    d = start(daemon, cfg, port)
    url, args = f"https://a.example:{port}/", [*resolve("a.example", port), "--cacert", str(tls_ca.cert)]

    r = curl(url, *args)                                            # no client certificate
    assert r.returncode != 0 and "mtls-ok" not in r.stdout, r.stdout
    text = d.wait_log("route=mtls ")
    [line] = log_lines(text, "mtls")
    assert "reason=tls-handshake-failed" in line and "certificate" in line, line

    rogue = make_ca_factory("rogue CA").issue("client.example")  # signed by a CA the route does not trust
    r = curl(url, *args, "--cert", str(rogue.cert), "--key", str(rogue.key))
    assert r.returncode != 0 and "mtls-ok" not in r.stdout, r.stdout
    text = d.wait_log(" route=mtls ", count=2)
    line = log_lines(text, "mtls")[1]
    assert "reason=tls-handshake-failed" in line and 'detail="certificate verify failed' in line, line

    client = leaves["client"]
    assert curl_ok(url, *args, "--cert", str(client.cert), "--key", str(client.key)) == ("mtls-ok", "1.1")
    text = d.wait_log(" route=mtls ", count=3)
    line = log_lines(text, "mtls")[2]
    assert "reason=eof" in line and "client_cn=client.example" in line, line


# --- re-encryption to a verified backend ----------------------------------------------------------------
@pytest.mark.timeout(60)
def test_reencrypts_to_a_verified_nginx_and_refuses_an_untrusted_one(daemon, nginx, leaves, tls_ca,
                                                                     make_ca_factory):
    good, rogue = free_port(), free_port()
    trusted = leaves["backend"]
    untrusted = make_ca_factory("rogue CA").issue("backend.example")
    nginx(tls_server_block(good, trusted.chain, trusted.key, "tls-backend")
          + tls_server_block(rogue, untrusted.chain, untrusted.key, "rogue-backend"), [good, rogue])
    port = free_port()
    backend_tls = {"backend_tls": "yes", "backend_tls_ca": tls_ca.cert, "backend_sni": "backend.example"}
    cfg = config({"main": (port, ["reenc", "rogue", "misnamed"])}, {
        "reenc": terminating(leaves["a"], good, sni="a.example", **backend_tls),
        "rogue": terminating(leaves["b"], rogue, sni="b.example", **backend_tls),
        "misnamed": terminating(leaves["h2"], good, sni="h2.example",
                                **{**backend_tls, "backend_sni": "elsewhere.example"}),
    })
    d = start(daemon, cfg, port)
    ca = ["--cacert", str(tls_ca.cert)]

    # nginx's port speaks TLS only: the body proves epollmux re-encrypted
    assert curl_ok(f"https://a.example:{port}/", *resolve("a.example", port), *ca) == ("tls-backend", "1.1")
    for name in ("b.example", "h2.example"):
        r = curl(f"https://{name}:{port}/", *resolve(name, port), *ca)
        assert r.returncode in (52, 56), (name, r.returncode, r.stderr)   # empty reply / connection closed
        assert "backend" not in r.stdout
    text = d.wait_log(" route=misnamed ", count=1)
    [line] = log_lines(text, "rogue")
    assert re.search(r'reason=backend-tls-\S+ .*detail="certificate verify failed', line), line
    [line] = log_lines(text, "misnamed")
    assert re.search(r'reason=backend-tls-\S+ .*detail="certificate verify failed: hostname mismatch', line,
                     re.I), line
    # curl sends close_notify; the daemon passes it on to nginx, which closes TCP without answering
    # (nginx never replies to a close_notify it received). Whatever the daemon calls that, the reason
    # must say it happened on the backend side, as the handshake failures above do: a bare
    # `tls-truncated` reads as the client's doing.
    [line] = log_lines(text, "reenc")
    assert re.search(r" reason=(eof|backend-tls-\S+) ", line), line


# --- clean ends: close_notify both ways, half-close, KeyUpdate; leaving before the inner decision -----------
def read_to_end(client: HandClient) -> tuple[bytes, bool]:
    """All plaintext until the daemon ends the stream; True if it ended with a close_notify."""
    got = b""
    client.sock.settimeout(10)
    while True:
        try:
            got += client.tls.read(65536)
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            return got, True
        data = client.sock.recv(65536)
        if not data:
            return got, False
        client.incoming.write(data)


@pytest.mark.timeout(60)
def test_close_notify_half_close_and_key_update_pass_through(daemon, server, leaves, tls_ca):
    backend = server(echo)
    port = free_port()
    d = start(daemon, config({"main": (port, ["echo"])},
                             {"echo": terminating(leaves["a"], backend.port, sni="a.example")}), port)
    # 1 MiB, then close_notify at once: the backend gets EOF after the bytes, and its echo still comes back
    client = HandClient(port, "a.example", tls_ca.cert)
    blob = os.urandom(1 << 20)
    out = client.handshake() + b"".join(client.record(blob[i:i + 16384]) for i in range(0, len(blob), 16384))
    client.sock.sendall(out + client.close_notify())
    got, clean = read_to_end(client)
    client.close()
    assert got == blob
    assert clean, "the daemon ended without close_notify"
    line = log_lines(d.wait_log(" route=echo ", count=1), "echo")[0]
    assert f" up={len(blob)} down={len(blob)} " in line and " reason=eof " in line, line

    # TLS 1.3 KeyUpdate from the client, with and without update_requested (s_client's K and k)
    proc = subprocess.Popen([need("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                             "a.example", "-CAfile", str(tls_ca.cert), "-verify_return_error", "-no_ign_eof"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        seen = b""

        def until(needle: bytes, times: int = 1) -> None:
            nonlocal seen
            deadline = time.monotonic() + 10
            while seen.count(needle) < times:
                assert time.monotonic() < deadline, f"{needle!r} not seen:\n{seen[-2000:]!r}"
                if select.select([proc.stdout], [], [], 0.2)[0]:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    assert chunk, f"s_client ended:\n{seen[-2000:]!r}"
                    seen += chunk

        until(b"Verify return code: 0 (ok)")
        # one line at a time: s_client takes a command letter only at the start of what one read() returns
        for line, needle, times in ((b"before\n", b"before\n", 1), (b"K\n", b"KEYUPDATE", 1),
                                    (b"after-K\n", b"after-K\n", 1), (b"k\n", b"KEYUPDATE", 2),
                                    (b"after-k\n", b"after-k\n", 1)):
            proc.stdin.write(line)
            proc.stdin.flush()
            until(needle, times)
        assert seen.count(b"KEYUPDATE") == 2
        proc.stdin.close()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    line = log_lines(d.wait_log(" route=echo ", count=2), "echo")[1]
    assert " up=23 down=23 " in line and " reason=eof " in line, line


@pytest.mark.timeout(30)
def test_a_client_leaving_before_the_inner_decision_is_logged_on_the_outer_route(daemon, server, leaves,
                                                                               tls_ca):
    backend = server(echo)
    port = free_port()
    cfg = config({"main": (port, ["tunnel"])}, {
        "tunnel": terminating(leaves["ssh"], None, sni="ssh.example", inner_routes="inner"),
        "inner": {"probe": "ssh", "backend": f"127.0.0.1:{backend.port}"},
    }, probe_timeout=0.5)
    d = start(daemon, cfg, port)
    leaves_at_once = HandClient(port, "ssh.example", tls_ca.cert)    # handshake, close_notify, no byte
    leaves_at_once.sock.sendall(leaves_at_once.handshake() + leaves_at_once.close_notify())
    leaves_at_once.closed_by_peer()
    leaves_at_once.close()
    silent = HandClient(port, "ssh.example", tls_ca.cert)            # handshake, then silence
    silent.sock.sendall(silent.handshake())
    silent.closed_by_peer()
    silent.close()
    text = d.wait_log(" reason=", count=2)
    lines = [line for line in text.splitlines() if " reason=" in line]
    assert [re.search(r" reason=(\S+)", line).group(1) for line in lines] == ["client-eof", "probe-timeout"]
    for line in lines:
        # no inner route was chosen: neither `tunnel>tunnel` nor the outer route's placeholder backend
        assert re.search(r" route=tunnel up=", line), line
    assert backend.accepted == 0


# --- hostile input ---------------------------------------------------------------------------------------
def hello_bytes(ca: Path, name: str = "a.example") -> bytes:
    """A real ClientHello (TLS 1.3 and 1.2, with SNI), made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(ca).wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def good_session(port: int, ca: Path, payload: bytes) -> None:
    """A fresh client: handshake, echo, clean close (close_notify both ways)."""
    with tls_connect(port, "a.example", ca) as tls:
        assert_echoes(tls, payload)
        tls.unwrap()


GARBAGE = b"\xde\xad\xbe\xef" * 64


@pytest.mark.timeout(60)
def test_hostile_tls_clients_are_closed_with_a_reason_and_harm_no_one(daemon, server, leaves, tls_ca):
    """Each bad client, on a `probe = any` route where every byte meets the TLS engine, is closed with its
    reason while a long-lived good client and a fresh one are served; one that completes the handshake
    and stalls stays open and unharmed."""
    backend = server(echo)
    port, raw = free_port(), free_port()
    a = leaves["a"]
    cfg = config({"sniffed": (port, ["good"]), "raw": (raw, ["strict"])}, {
        "good": terminating(a, backend.port, sni="a.example"),
        "strict": terminating(a, backend.port, probe="any"),
    }, tls_handshake_timeout=1.0)
    d = start(daemon, cfg, port)
    ca = tls_ca.cert
    keeper = tls_connect(port, "a.example", ca)          # a good client open all along
    assert_echoes(keeper, b"before")

    def plaintext(c):
        c.sock.sendall(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")

    def truncated_hello(c):
        c.sock.sendall(c.hello()[:40])
        c.sock.shutdown(socket.SHUT_WR)

    def truncated_finished(c):
        last = c.handshake()
        c.sock.sendall(last[:len(last) // 2])
        c.sock.shutdown(socket.SHUT_WR)

    def garbage_after_hello(c):
        c.sock.sendall(c.hello() + GARBAGE)

    def truncated_record(c):
        c.sock.sendall(c.handshake() + c.record(b"x" * 1000)[:-100])
        c.sock.shutdown(socket.SHUT_WR)

    def forged_record(c):                                 # a well-formed header, a body that fails to decrypt
        c.sock.sendall(c.handshake() + b"\x17\x03\x03\x00\x40" + bytes(range(64)))

    def stalls_in_handshake(c):
        c.sock.sendall(c.hello())

    cases = [(plaintext, "tls-not-tls"), (truncated_hello, "tls-truncated"),
             (truncated_finished, "tls-truncated"), (garbage_after_hello, "tls-handshake-failed"),
             (truncated_record, "tls-truncated"), (forged_record, "tls-protocol-error"),
             (stalls_in_handshake, "tls-handshake-timeout")]
    lines = {}
    for n, (act, reason) in enumerate(cases, 1):
        bad = HandClient(raw, "a.example", ca)
        t0 = time.monotonic()
        act(bad)
        assert_echoes(keeper, f"during {act.__name__}".encode())     # others are served meanwhile
        good_session(port, ca, act.__name__.encode() * 100)
        bad.closed_by_peer(timeout=10)                           # the daemon closes the bad one
        waited = time.monotonic() - t0
        bad.close()
        text = d.wait_log(" route=strict ", count=n)
        line = log_lines(text, "strict")[-1]
        assert f" reason={reason}" in line, (act.__name__, line)
        if reason == "tls-handshake-timeout":
            assert 0.9 <= waited < 5, waited
        else:
            lines[act.__name__] = line

    stalled = HandClient(raw, "a.example", ca)               # completes the handshake, then stalls
    stalled.sock.sendall(stalled.handshake())
    time.sleep(1.5)                                          # past tls_handshake_timeout: not its business
    assert_echoes(keeper, b"beside a stalled client")
    good_session(port, ca, b"beside a stalled client")
    stalled.sock.sendall(stalled.record(b"still here"))      # it was neither closed nor harmed
    assert stalled.read(100) == b"still here"
    stalled.sock.sendall(stalled.close_notify())
    stalled.closed_by_peer()
    stalled.close()

    assert_echoes(keeper, b"after")
    keeper.unwrap()
    keeper.close()
    block = stats(d)
    for reason, n in (("tls-not-tls", 1), ("tls-truncated", 3), ("tls-handshake-failed", 1),
                      ("tls-protocol-error", 1), ("tls-handshake-timeout", 1), ("eof", 1)):
        assert closed_count(block, "strict", reason) == n, (reason, block)
    assert closed_count(block, "good", "eof") == len(cases) + 2, block
    assert re.search(r"accepted=\d+ active=0 ", block), block
    assert d.proc.poll() is None and not backend.errors
    # what OpenSSL said is logged, whether the error came in the handshake or while relaying
    no_detail = [name for name, line in lines.items() if " detail=" not in line]
    assert not no_detail, [lines[name] for name in no_detail]


@pytest.mark.timeout(90)
def test_no_memory_growth_over_10000_bad_handshakes(daemon, server, leaves, tls_ca):
    """RSS of the supervisor and its one worker after 500 bad handshakes and after 10,000 more.

    tls_handshake_timeout keeps its default (10 s): a closed connection must not live on in anything
    armed for it (a cancelled timer, say) until that deadline.
    """
    backend = server(echo)
    raw = free_port()
    cfg = config({"raw": (raw, ["strict"])}, {"strict": terminating(leaves["a"], backend.port, probe="any")})
    d = start(daemon, cfg, raw)
    hello = hello_bytes(tls_ca.cert)
    kinds = [(hello + GARBAGE, False),                      # full server flight, then a failure
             (hello[:len(hello) // 2], True),               # truncated hello, then FIN
             (b"GET / HTTP/1.0\r\n\r\n", False)]            # plaintext

    def run(count: int, batch: int = 100) -> None:
        done = 0
        while done < count:
            socks = []
            for i in range(done, min(count, done + batch)):
                data, fin = kinds[i % len(kinds)]
                s = connect(raw)
                s.sendall(data)
                if fin:
                    s.shutdown(socket.SHUT_WR)
                socks.append(s)
            for s in socks:
                s.settimeout(10)
                try:
                    recv_all(s)                             # until the daemon closes it
                except ConnectionResetError:
                    pass
                s.close()
            done += len(socks)

    warm, total = 500, 10_000
    run(warm)
    time.sleep(0.5)
    rss0 = tree_rss_kib(d.pid)
    t0 = time.monotonic()
    run(total)
    took = time.monotonic() - t0
    block = stats(d)
    rss1 = tree_rss_kib(d.pid)
    print(f"RSS over {total} bad handshakes ({took:.1f} s): {rss0} KiB -> {rss1} KiB "
          f"({(rss1 - rss0) / 1024:+.2f} MiB, supervisor + 1 worker)")
    for k, reason in enumerate(("tls-handshake-failed", "tls-truncated", "tls-not-tls")):
        want = len(range(k, warm, 3)) + len(range(k, total, 3))
        assert closed_count(block, "strict", reason) == want, (reason, block)
    assert re.search(r"active=0 ", block), block
    assert rss1 - rss0 < 8 * 1024, (rss0, rss1)
    # and it still serves
    with tls_connect(raw, "a.example", tls_ca.cert) as tls:
        assert_echoes(tls, b"still serving")


# --- --check ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_check_reports_bad_certificates_and_keys(leaves, tls_ca, tmp_path):
    a = leaves["a"]
    expired = tls_ca.issue("old.example", days=-1, start_days=-30)
    mismatched = tls_ca.mismatched("pair.example")
    unreadable = tmp_path / "unreadable.key"
    unreadable.mkdir()                    # a directory cannot be read as a file, not even by root
    routes = {
        "missing": terminating(a, 1, tls_cert=tmp_path / "missing.pem"),
        "unreadable": terminating(a, 1, tls_key=unreadable),
        "mismatched": terminating(a, 1, tls_cert=mismatched.chain, tls_key=mismatched.key),
        "expired": terminating(expired, 1),
        "fine": terminating(leaves["b"], 1),
    }
    path = tmp_path / "bad.conf"
    path.write_text(config({"main": (free_port(), list(routes))}, routes))
    r = subprocess.run([sys.executable, "-m", "epollmux", "-c", str(path), "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    lines = (r.stdout + r.stderr).strip().splitlines()
    form = re.compile(rf"^{re.escape(str(path))}: \[routes\.(\w+)\] (\w+): (.+)$")
    parsed = [form.match(line) for line in lines]
    assert all(parsed), lines
    found = {(m.group(1), m.group(2)): m.group(3) for m in parsed}
    assert set(found) == {("missing", "tls_cert"), ("unreadable", "tls_key"), ("mismatched", "tls_key"),
                          ("expired", "tls_cert")}, lines
    assert found["missing", "tls_cert"].startswith(f"cannot read {tmp_path / 'missing.pem'}: ")
    assert found["unreadable", "tls_key"] == f"cannot read {unreadable}: Is a directory"
    assert found["mismatched", "tls_key"] == f"does not match the certificate in {mismatched.chain}"
    assert found["expired", "tls_cert"].startswith(f"{expired.chain} expired on ")


# --- headless Chromium -------------------------------------------------------------------------------------
PAGE_COLOR = (0x1E, 0x6B, 0x3A)          # the page's background: seen in the screenshot only if it rendered


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up, corner = prev[x], prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + left) & 255
            elif kind == 2:
                line[x] = (line[x] + up) & 255
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(line[i] for i in range(stride) if i % bpp < 3))
        prev = line
    return width, height, rows


def spki_sha256_b64(cert: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a certificate: what --ignore-certificate-errors-spki-list takes."""
    pub = subprocess.run([need("openssl"), "x509", "-in", str(cert), "-noout", "-pubkey"], capture_output=True,
                         check=True, timeout=30).stdout
    der = subprocess.run([need("openssl"), "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True,
                         check=True, timeout=30).stdout
    import base64
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.mark.timeout(90)
def test_headless_chromium_renders_a_page_through_a_terminating_route(daemon, nginx, leaves, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    www = tmp_path / "www"
    www.mkdir()
    color = "#%02x%02x%02x" % PAGE_COLOR
    (www / "index.html").write_text(
        f"<!doctype html><html><head><title>epollmux</title></head>"
        f"<body style='margin:0;background:{color};color:#fff;font:48px sans-serif'>"
        f"<p style='padding:40px'>served through epollmux TLS termination</p></body></html>\n")
    (www / "favicon.ico").write_bytes(b"")
    web, h2c = free_port(), free_port()
    nginx(f"server {{ listen 127.0.0.1:{web}; root {www}; }}\n"
          f"server {{ listen 127.0.0.1:{h2c} http2; root {www}; }}\n", [web, h2c])
    port = free_port()
    a = leaves["a"]
    cfg = config({"main": (port, ["web"])}, {
        "web": terminating(a, None, sni="a.example", tls_alpn="h2, http/1.1", inner_routes="h2c, h1"),
        "h2c": {"probe": "regex", "regex": '"^PRI "', "min_length": 4, "backend": f"127.0.0.1:{h2c}"},
        "h1": {"probe": "http", "backend": f"127.0.0.1:{web}"},
    })
    d = start(daemon, cfg, port)
    shot = tmp_path / "shot.png"
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
            "--host-resolver-rules=MAP a.example 127.0.0.1",
            f"--ignore-certificate-errors-spki-list={spki_sha256_b64(a.cert)}",   # trust this key only
            f"--screenshot={shot}", "--window-size=800,600", f"https://a.example:{port}/"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**CLIENT_ENV, "HOME": str(tmp_path)}, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:                 # chromium's helpers share its session: end the group by PID
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    log = out.decode(errors="replace")
    assert shot.exists() and shot.stat().st_size > 2000, log[-3000:]
    shutil.copyfile(shot, CHROMIUM_COPY)
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (800, 600)
    assert rows[height - 20][3 * 400:3 * 401] == bytes(PAGE_COLOR), "the page's background is not on screen"
    colors = {rows[y][x:x + 3] for y in range(0, height, 10) for x in range(0, 3 * width, 30)}
    assert len(colors) > 2, "nothing but the background: the text did not render"
    text = d.wait_log(" route=web>")
    lines = [line for line in text.splitlines() if " route=web>" in line]
    assert any(" route=web>h2c " in line and " alpn=h2" in line for line in lines), lines
    assert not any(" route=web>h1 " in line for line in lines), lines        # chromium chose h2


@pytest.mark.timeout(60)
def test_a_late_client_hello_and_many_small_records_on_a_probe_any_route(daemon, server, leaves, tls_ca):
    """`probe = any` terminates at accept: the daemon waits, silent, for a ClientHello sent late, then
    relays small records one by one, a burst of many records in one segment, and records cut byte by byte."""
    backend = server(echo)
    port = free_port()
    d = start(daemon, config({"raw": (port, ["strict"])},
                             {"strict": terminating(leaves["a"], backend.port, probe="any")}), port)
    client = HandClient(port, "a.example", tls_ca.cert)
    assert select.select([client.sock], [], [], 0.5)[0] == []       # a server says nothing first
    client.sock.sendall(client.handshake())
    up = 0
    for i in range(200):                                             # keep-alive: one small record each way
        message = b"request %d\r\n" % i
        up += len(message)
        client.sock.sendall(client.record(message))
        got = b""
        while len(got) < len(message):
            got += client.read(65536)
        assert got == message
    burst = [os.urandom(1 + i * 37) for i in range(64)]              # 64 records in one send
    client.sock.sendall(b"".join(client.record(m) for m in burst))
    wire = client.record(b"last, byte by byte")
    for i in range(len(wire)):
        client.sock.send(wire[i:i + 1])
        time.sleep(0.001)
    expected = b"".join(burst) + b"last, byte by byte"
    got = b""
    while len(got) < len(expected):
        got += client.read(65536)
    assert got == expected
    client.sock.sendall(client.close_notify())
    rest, clean = read_to_end(client)
    client.close()
    assert rest == b"" and clean
    line = log_lines(d.wait_log(" route=strict ", count=1), "strict")[0]
    assert f" up={up + len(expected)} down={up + len(expected)} " in line, line
    assert " reason=eof " in line, line
