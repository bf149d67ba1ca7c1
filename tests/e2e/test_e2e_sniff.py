"""Protocol sniffing end to end: real clients and servers through one epollmux port.

ssh to a real sshd (a command, a 4 MiB upload), curl https routed by SNI and by ALPN to nginx TLS servers,
curl http routed by Host, a real OpenVPN TCP client reaching a real OpenVPN server, the probe timeout and
the on_timeout route, clients that leave before a decision, junk with and without an `any` route,
1,500 stalled sniffers, and the sslh-style command line.  Only 127.0.0.1; every process is ended by its PID
(the fixtures of conftest.py and peers.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import select
import signal
import socket
import subprocess
import time

import pytest

from support.net import connect, echo, free_port, read_line, recv_all
from support.daemon import make_config, tree_cpu_seconds, tree_pids
from support.peers import need, openvpn_keys, text_server_block, tls_server_block

CLIENT_ENV = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


# --- helpers ---------------------------------------------------------------------------------------
def start(daemon, cfg: str, port: int, workers: int = 1):
    """Start a daemon and wait until its workers accept (so SIGUSR1 reaches them)."""
    return daemon().start(cfg, ready=True)


def active(d, workers: int = 1, timeout: float = 10.0) -> int:
    """SIGUSR1, then the sum of `active=N` over the stats the workers log in answer."""
    before = d.log_text().count("stats:\n")
    os.kill(d.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while True:
        chunks = d.log_text().split("stats:\n")[1 + before:]
        if len(chunks) >= workers:
            return sum(int(re.match(r"accepted=\d+ active=(\d+)", c).group(1)) for c in chunks)
        assert time.monotonic() < deadline, f"no stats after SIGUSR1:\n{d.log_text()[-2000:]}"
        time.sleep(0.05)


def wait_active(d, want: int, workers: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (n := active(d, workers)) != want:
        assert time.monotonic() < deadline, f"active={n}, expected {want}"
        time.sleep(0.2)


def named(name: str):
    """A backend that speaks first (its name and a newline), then echoes."""
    def handle(sock: socket.socket) -> None:
        sock.sendall(name.encode() + b"\n")
        echo(sock)
    return handle


def abort(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def closed_without_data(sock: socket.socket) -> bool:
    """True if the peer closed sending nothing (FIN, or RST: a socket closed with unread bytes resets)."""
    try:
        return recv_all(sock) == b""
    except ConnectionResetError:
        return True


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def curl(url: str, *args: str) -> tuple[str, str]:
    """(body, HTTP version) of a curl request; fails the test if curl fails."""
    r = subprocess.run([need("curl"), "-sS", "--max-time", "10", "-w", "\n%{http_version}", *args, url],
                       capture_output=True, text=True, timeout=30, env=CLIENT_ENV)
    assert r.returncode == 0, f"curl {url}: {r.stderr}"
    body, _, version = r.stdout.rpartition("\n")
    return body.strip(), version


def dead_port() -> int:
    """A port nobody listens on: the backend of routes a test does not exercise."""
    return free_port()


# --- one port for everything: ssh, TLS by SNI and ALPN, HTTP by Host, OpenVPN, fallback --------------
NAMES = ("tls_a", "tls_b", "h2", "h1", "http_a", "http_b", "fallback")


@pytest.fixture
def web(nginx, tls_ca):
    """One nginx with a server per route: TLS a.example, b.example, h2 and http/1.1 (c.example), plain HTTP."""
    ports = {name: free_port() for name in NAMES}
    a, b, c = tls_ca.issue("a.example"), tls_ca.issue("b.example"), tls_ca.issue("c.example")
    blocks = [tls_server_block(ports["tls_a"], a.chain, a.key, "tls-a"),
              tls_server_block(ports["tls_b"], b.chain, b.key, "tls-b"),
              tls_server_block(ports["h2"], c.chain, c.key, "alpn-h2", http2=True),
              tls_server_block(ports["h1"], c.chain, c.key, "alpn-http1"),
              text_server_block(ports["http_a"], "http-a"),
              text_server_block(ports["http_b"], "http-b"),
              text_server_block(ports["fallback"], "fallback")]
    nginx("".join(blocks), list(ports.values()))
    return ports


MUX_ROUTES = {"ssh": {"probe": "ssh"}, "tls_a": {"probe": "tls", "sni": "a.example"},
              "tls_b": {"probe": "tls", "sni": "b.example"}, "h2": {"probe": "tls", "alpn": "h2"},
              "h1": {"probe": "tls", "alpn": "http/1.1"}, "http_a": {"probe": "http", "host": "a.example"},
              "http_b": {"probe": "http", "host": "b.example"}, "openvpn": {"probe": "openvpn"},
              "fallback": {"probe": "any"}}


def mux_config(port: int, backends: dict[str, int], **glob) -> str:
    """All routes on one listener, in this order; a route whose backend is not given points at a dead port."""
    return make_config(port, {name: {**opts, "backend": f"127.0.0.1:{backends.get(name) or dead_port()}"}
                              for name, opts in MUX_ROUTES.items()},
                       **{"log_level": "debug", "workers": 1, **glob})


@pytest.mark.timeout(60)
def test_ssh_runs_a_command_and_uploads_a_file(daemon, sshd, web, tmp_path):
    server = sshd()
    port = free_port()
    d = start(daemon, mux_config(port, {"ssh": server.port, **web}), port)

    r = subprocess.run(server.ssh_argv(port, "echo through-epollmux; id -un"), capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["through-epollmux", server.user]

    blob = os.urandom(4 << 20)
    src, dst = tmp_path / "upload.bin", tmp_path / "uploaded.bin"
    src.write_bytes(blob)
    with open(src, "rb") as f:
        r = subprocess.run(server.ssh_argv(port, f"cat > {dst} && sha256sum {dst}"), stdin=f,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    want = hashlib.sha256(blob).hexdigest()
    assert r.stdout.split()[0] == want                      # the hash sshd's side computed
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == want

    text = d.wait_log("route=ssh ", count=2)
    sessions = re.findall(r"route=(\S+) backend=\S+ up=(\d+) .* reason=(\S+)", text)
    assert [(route, reason) for route, _, reason in sessions] == [("ssh", "eof")] * 2, sessions
    assert int(sessions[1][1]) > len(blob)                  # the upload went through the relay
    assert server.log_path.read_text().count("Accepted publickey for") == 2


@pytest.mark.timeout(60)
def test_https_routed_by_sni_and_by_alpn(daemon, web, tls_ca):
    port = free_port()
    d = start(daemon, mux_config(port, web), port)
    ca = ["--cacert", str(tls_ca.cert)]                    # verified: the certificate names the host asked for
    for name, body in (("a.example", "tls-a"), ("b.example", "tls-b"), ("A.Example", "tls-a")):
        got, _ = curl(f"https://{name}:{port}/", "--resolve", f"{name}:{port}:127.0.0.1", *ca)
        assert got == body, name
    # c.example matches no sni route: the ALPN routes decide, in route order (h2 before http/1.1)
    resolve = ["--resolve", f"c.example:{port}:127.0.0.1", *ca]
    assert curl(f"https://c.example:{port}/", "--http2", *resolve) == ("alpn-h2", "2")
    assert curl(f"https://c.example:{port}/", "--http1.1", *resolve) == ("alpn-http1", "1.1")
    d.wait_log("route=tls_a ", count=2)                      # close lines come after curl has its answer
    for route in ("tls_b", "h2", "h1"):
        d.wait_log(f"route={route} ")
    assert "route=fallback " not in d.log_text()


@pytest.mark.timeout(60)
def test_http_routed_by_host(daemon, web):
    port = free_port()
    d = start(daemon, mux_config(port, web), port)
    for name, body in (("a.example", "http-a"), ("b.example", "http-b"), ("c.example", "fallback")):
        got, version = curl(f"http://{name}:{port}/", "--http1.1", "--resolve", f"{name}:{port}:127.0.0.1")
        assert (got, version) == (body, "1.1"), name
    for route in ("http_a", "http_b", "fallback"):       # close lines come after curl has its answer
        d.wait_log(f"route={route} ")


@pytest.mark.timeout(60)
def test_openvpn_client_reaches_openvpn_server(daemon, openvpn, web, tmp_path):
    keys = openvpn_keys(tmp_path / "ovpn-keys")
    vpn_port, port = free_port(), free_port()
    server = openvpn("server", vpn_port, keys)
    d = start(daemon, mux_config(port, {"openvpn": vpn_port, **web}), port)
    client = openvpn("client", port, keys)
    client.wait_ready(20)
    server.wait_ready(20)
    assert "openvpn=match" in d.log_text()
    client.stop()
    text = d.wait_log("route=openvpn ", timeout=10)
    assert not re.search(r"route=(?!openvpn )\S+ ", text), "some connection went elsewhere"


# --- timeouts, clients that leave, junk: thread backends that name themselves ------------------------
def start_sniffer(daemon, named_backends, **glob):
    """A daemon with sniff_config's two listeners in front of named_backends: (daemon, port, other)."""
    port, other = free_port(), free_port()
    ports = {name: s.port for name, s in named_backends.items()}
    return start(daemon, sniff_config(port, other, ports, **glob), port), port, other


def sniff_config(port: int, other: int, backends: dict[str, int], **glob) -> str:
    """Listener `port` has ssh, tls, http and an `any` route; listener `other` the same without `any`."""
    return make_config({"with_any": {"address": f"127.0.0.1:{port}", "routes": "ssh, tls, http, any"},
                        "no_any": {"address": f"127.0.0.1:{other}", "routes": "ssh, tls, http"}},
                       {name: {"probe": name, "backend": f"127.0.0.1:{backends[name]}"}
                        for name in ("ssh", "tls", "http", "any")},
                       **{"log_level": "debug", "workers": 1, **glob})


@pytest.fixture
def named_backends(server):
    return {name: server(named(name)) for name in ("ssh", "tls", "http", "any")}


@pytest.mark.timeout(30)
def test_silent_client_reaches_on_timeout_route_after_probe_timeout(daemon, named_backends):
    d, port, other = start_sniffer(daemon, named_backends, probe_timeout=0.5, on_timeout="ssh")
    first = connect(port)
    t_first = time.monotonic()
    time.sleep(0.3)
    second = connect(other)                       # its own timer: counted from its own accept
    t_second = time.monotonic()
    stalled = connect(port)                       # half a method, then nothing: the timeout decides too
    t_stalled = time.monotonic()
    stalled.sendall(b"GE")
    waits = []
    for sock, t0, sent in ((first, t_first, b""), (second, t_second, b""), (stalled, t_stalled, b"GE")):
        assert read_line(sock) == b"ssh\n"
        waits.append(time.monotonic() - t0)
        assert recv_exact(sock, len(sent)) == sent  # the peeked bytes reach the on_timeout backend
        sock.sendall(b"after the timeout")
        assert recv_exact(sock, 17) == b"after the timeout"
        sock.close()
    print(f"on_timeout latencies (probe_timeout 0.5 s): {', '.join(f'{w:.3f} s' for w in waits)}")
    assert all(w >= 0.4 for w in waits), waits
    assert all(w < 5 for w in waits), waits
    wait_active(d, 0)
    text = d.log_text()
    assert "probe_timeouts route=ssh 3" in text, text[-2000:]
    assert [s.accepted for s in named_backends.values()] == [3, 0, 0, 0]


@pytest.mark.timeout(30)
def test_clients_leaving_before_a_decision_leave_nothing_behind(daemon, named_backends):
    d, port, other = start_sniffer(daemon, named_backends, probe_timeout=30, on_timeout="ssh")
    worker = [p for p in tree_pids(d.pid) if p != d.pid]
    assert len(worker) == 1
    fds_before = len(os.listdir(f"/proc/{worker[0]}/fd"))

    silent = [connect(p) for p in (port, other) for _ in range(5)]      # nothing sent, then FIN
    reset = [connect(p) for p in (port, other)]                         # nothing sent, then RST
    partial = [connect(other) for _ in range(3)]                        # half a header, then FIN: no route fits
    for s, data in zip(partial, (b"\x16\x03", b"GE", b"SS"), strict=True):
        s.sendall(data)
    wait_active(d, len(silent) + len(reset) + len(partial))
    for s in silent + partial:
        s.close()
    for s in reset:
        abort(s)
    wait_active(d, 0)
    text = d.log_text()
    assert f"closed route=- reason=client-eof {len(silent)}" in text, text[-2000:]
    assert f"closed route=- reason=no-route {len(partial)}" in text, text[-2000:]
    assert f"closed route=- reason=reset {len(reset)}" in text, text[-2000:]
    assert not re.search(r"route=(?!- )\S+ backend", text), "a leaving client was routed"
    assert [s.accepted for s in named_backends.values()] == [0, 0, 0, 0]
    assert len(os.listdir(f"/proc/{worker[0]}/fd")) == fds_before


@pytest.mark.timeout(30)
def test_client_resetting_after_partial_bytes_is_not_routed(daemon, named_backends):
    """A client that sent half a header and then reset is gone: its bytes must not open a backend.

    (The kernel keeps the peeked bytes readable after the RST, so they look like "all there will be".)
    """
    d, port, other = start_sniffer(daemon, named_backends, probe_timeout=30, on_timeout="ssh")
    clients = [connect(port) for _ in range(3)]
    for s, data in zip(clients, (b"\x16\x03", b"GE", b"SS"), strict=True):
        s.sendall(data)
    wait_active(d, len(clients))
    for s in clients:
        abort(s)
    wait_active(d, 0)
    assert [s.accepted for s in named_backends.values()] == [0, 0, 0, 0], "a reset client was routed"
    assert f"closed route=- reason=reset {len(clients)}" in d.log_text(), d.log_text()[-2000:]


@pytest.mark.timeout(30)
def test_junk_goes_to_the_any_route_or_is_closed(daemon, named_backends):
    d, port, other = start_sniffer(daemon, named_backends, probe_timeout=10, on_timeout="ssh")
    junk = b"hello, this is no protocol\r\n\x00\xff"
    with connect(port) as c:
        c.sendall(junk)
        assert read_line(c) == b"any\n"
        assert recv_exact(c, len(junk)) == junk  # the peeked bytes reach the backend intact, once
    with connect(other) as c:
        t0 = time.monotonic()
        c.sendall(junk)
        assert closed_without_data(c)           # closed, nothing sent
        assert time.monotonic() - t0 < 5         # at once, not after probe_timeout
    d.wait_log("reason=no-route")
    assert [s.accepted for s in named_backends.values()] == [0, 0, 0, 1]


@pytest.mark.timeout(30)
def test_partial_tls_header_then_half_close_is_decided_at_once(daemon, named_backends):
    d, port, other = start_sniffer(daemon, named_backends, probe_timeout=10, on_timeout="ssh")
    latencies = []
    for p, want in ((port, b"any\n\x16\x03"), (other, b"")):
        with connect(p) as c:
            t0 = time.monotonic()
            c.sendall(b"\x16\x03")
            time.sleep(0.1)                      # the daemon has seen the bytes and waits for more
            c.shutdown(socket.SHUT_WR)
            if want:                             # any route: the 2 bytes reach it, then the end
                assert recv_all(c) == want
            else:
                assert closed_without_data(c)
            latencies.append(time.monotonic() - t0 - 0.1)
    print(f"partial TLS header + SHUT_WR decided after {latencies[0]:.3f} s (any) / {latencies[1]:.3f} s (close)")
    assert all(t < 5 for t in latencies), latencies          # probe_timeout is 10 s
    d.wait_log("reason=no-route")
    wait_active(d, 0)                                        # the stats it logs count no probe timeout
    assert "probe_timeouts" not in d.log_text()
    assert [s.accepted for s in named_backends.values()] == [0, 0, 0, 1]


# --- 1,500 stalled sniffers ------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_stalled_sniffers_cost_nothing_and_do_not_delay_others(daemon, nginx):
    web = free_port()
    nginx(text_server_block(web, "served"), [web])
    port, workers = free_port(), 2
    cfg = make_config(port, {"ssh": {"probe": "ssh", "backend": f"127.0.0.1:{dead_port()}"},
                             "tls": {"probe": "tls", "backend": f"127.0.0.1:{dead_port()}"},
                             "http": {"probe": "http", "backend": f"127.0.0.1:{web}"}},
                      workers=workers, probe_timeout=30, log_level="info")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:                                        # 1,500 client sockets here, as many in the daemon
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    d = start(daemon, cfg, port, workers)
    stalled = []
    try:
        for first in (b"", b"\x16\x03", b"GE"):
            for _ in range(500):
                s = connect(port)
                if first:
                    s.sendall(first)
                stalled.append(s)
        wait_active(d, len(stalled), workers, timeout=20)
        time.sleep(0.3)                                    # let the last peeks settle

        cpu0, t0 = tree_cpu_seconds(d.pid), time.monotonic()
        time.sleep(1.5)
        c0 = time.monotonic()
        body, _ = curl(f"http://127.0.0.1:{port}/", "--http1.1")
        served = time.monotonic() - c0
        time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
        spent, window = tree_cpu_seconds(d.pid) - cpu0, time.monotonic() - t0
        print(f"1,500 stalled sniffers: {spent:.3f} CPU-s over {window:.2f} s; curl served in {served:.3f} s")
        assert body == "served"
        assert served < 1.0, served
        assert spent / window < 0.1, f"{spent:.3f} CPU-s in {window:.2f} s"

        poller = select.poll()                             # none was closed or answered meanwhile
        for s in stalled:
            poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
        assert poller.poll(0) == []
        assert active(d, workers) == len(stalled)
    finally:
        for s in stalled:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- the sslh-style command line ---------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_sslh_style_command_line_routes_by_protocol(daemon, server):
    backends = {name: server(named(name)) for name in ("ssh", "http", "anyprot")}
    port = free_port()
    d = daemon().start(args=["--listen", f"127.0.0.1:{port}",
                             "--ssh", f"127.0.0.1:{backends['ssh'].port}",
                             "--http", f"127.0.0.1:{backends['http'].port}",
                             "--anyprot", f"127.0.0.1:{backends['anyprot'].port}",
                             "--probe-timeout", "0.5"], wait=port)
    cases = [(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", "ssh"),
             (b"GET /index.html HTTP/1.1\r\nHost: example.org\r\n\r\n", "http"),
             (b"\x00\x07junk!\xff\xfe not a protocol", "anyprot")]
    for first, name in cases:
        with connect(port) as c:
            c.sendall(first)
            assert read_line(c) == name.encode() + b"\n", first
            assert recv_exact(c, len(first)) == first
    with connect(port) as c:                      # silent: the default on_timeout route is ssh, as in sslh
        t0 = time.monotonic()
        assert read_line(c) == b"ssh\n"
        assert time.monotonic() - t0 >= 0.4
    assert [s.accepted for s in backends.values()] == [2, 1, 1]
    assert d.proc.poll() is None
