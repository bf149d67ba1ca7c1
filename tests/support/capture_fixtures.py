#!/usr/bin/env python3
"""Re-capture tests/fixtures/probes/*.bin: the first bytes real clients send.

For each fixture: listen on 127.0.0.1 (random port), start the client against it, accept one connection
and record what arrives within CAPTURE_SECONDS (TLS clients: until their ClientHello is complete; HTTP/1
clients: until the end of the request head), then close and end the client by its PID.

Clients (Debian packages): openssh-client, curl, openssl, openvpn, python3, bsdutils (`logger`).
Usage: python3 tests/support/capture_fixtures.py [NAME ...]     (default: all; writes tests/fixtures/probes)
Only loopback addresses are used; throwaway keys and certificates live in a temporary directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent     # tests/
sys.path.insert(0, str(HERE.parent))  # the repo

from epollmux.wire.clienthello import HelloStatus, parse_client_hello  # noqa: E402

OUT_DIR = HERE / "fixtures" / "probes"
CAPTURE_SECONDS = 1.0
ACCEPT_SECONDS = 10.0
HOST = "www.example.org"
Stop = Callable[[bytes], bool]


def hello_done(data: bytes) -> bool:
    return parse_client_hello(data).status is not HelloStatus.NEED_MORE


def head_done(data: bytes) -> bool:
    return b"\r\n\r\n" in data


def client_env() -> dict[str, str]:
    """The environment minus proxy settings, so clients connect straight to the capture port."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def record(conn: socket.socket, stop: Stop | None) -> bytes:
    """Read from conn until stop(data), EOF, or CAPTURE_SECONDS have passed."""
    data = b""
    deadline = time.monotonic() + CAPTURE_SECONDS
    while not (stop and stop(data)):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn.settimeout(left)
        try:
            chunk = conn.recv(65536)
        except (socket.timeout, ConnectionError):
            break
        if not chunk:
            break
        data += chunk
    return data


def end_process(proc: subprocess.Popen) -> None:
    """End the client we started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


def capture(argv: Callable[[int], list[str]], stop: Stop | None) -> bytes:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc = subprocess.Popen(argv(port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=client_env())
        try:
            listener.settimeout(ACCEPT_SECONDS)
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                return b""
            with conn:
                return record(conn, stop)
        finally:
            end_process(proc)


# ------------------------------------------------------------------ clients
def ssh(port: int) -> list[str]:
    return ["ssh", "-F", "/dev/null", "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "capture@127.0.0.1", "true"]


def curl(*args: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return ["curl", "-sk", "--max-time", "5",
                "--resolve", f"{HOST}:{port}:127.0.0.1", *[a.format(port=port) for a in args]]
    return argv


def openssl(*args: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args]
    return argv


PY_SSL_CLIENT = """
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
try:
    ctx.wrap_socket(sock, server_hostname=sys.argv[2])
except OSError:
    pass
"""


def python_ssl(port: int) -> list[str]:
    return [sys.executable, "-c", PY_SSL_CLIENT, str(port), "python.example.org"]


def logger(port: int) -> list[str]:
    return ["logger", "--tcp", "-n", "127.0.0.1", "-P", str(port), "-t", "capture", "hello from logger"]


def run_quiet(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def openvpn_keys(tmp: Path) -> dict[str, Path]:
    """Throwaway CA/cert/key (one self-signed EC cert), a tls-auth key and a tls-crypt-v2 client key."""
    keys = {name: tmp / f"{name}.pem" for name in ("cert", "key", "ta", "tcv2_server", "tcv2_client")}
    run_quiet(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
               "-nodes", "-days", "2", "-subj", "/CN=epollmux-capture", "-keyout", str(keys["key"]),
               "-out", str(keys["cert"])])
    run_quiet(["openvpn", "--genkey", "secret", str(keys["ta"])])
    run_quiet(["openvpn", "--genkey", "tls-crypt-v2-server", str(keys["tcv2_server"])])
    run_quiet(["openvpn", "--tls-crypt-v2", str(keys["tcv2_server"]), "--genkey", "tls-crypt-v2-client",
               str(keys["tcv2_client"])])
    return keys


def openvpn(keys: dict[str, Path], *extra: str) -> Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        return ["openvpn", "--client", "--proto", "tcp-client", "--remote", "127.0.0.1", str(port),
                "--dev", "null", "--nobind", "--verb", "0", "--connect-retry-max", "1",
                "--ca", str(keys["cert"]), "--cert", str(keys["cert"]), "--key", str(keys["key"]), *extra]
    return argv


def fixtures(keys: dict[str, Path]) -> dict[str, tuple[Callable[[int], list[str]], Stop | None]]:
    long_name = ".".join(["a" * 59] * 4) + ".example.org"           # 251 bytes (OpenSSL allows 255)
    long_alpn = ",".join(["h2", "http/1.1", "x" * 250, "y" * 250])  # with the name: a hello > 2 records
    return {
        "ssh_openssh": (ssh, None),
        "tls_curl_sni": (curl("--http1.1", f"https://{HOST}:{{port}}/"), hello_done),
        "tls_curl_h2": (curl("--http2", f"https://{HOST}:{{port}}/"), hello_done),
        "http_curl_get": (curl("--http1.1", f"http://{HOST}:{{port}}/index.html"), head_done),
        "http_curl_h2c_prior": (curl("--http2-prior-knowledge", f"http://{HOST}:{{port}}/"), None),
        "socks5_curl": (lambda port: curl("--socks5-hostname", f"127.0.0.1:{port}", f"http://{HOST}/")(port), None),
        "tls_openssl12": (openssl("-tls1_2", "-noservername"), hello_done),
        "tls_openssl12_sni_alpn": (openssl("-tls1_2", "-servername", HOST, "-alpn", "h2,http/1.1"), hello_done),
        "tls_openssl13": (openssl("-tls1_3", "-noservername"), hello_done),
        "tls_openssl13_sni_alpn": (openssl("-tls1_3", "-servername", HOST, "-alpn", "h2,http/1.1"), hello_done),
        "tls_openssl13_fragmented": (openssl("-tls1_3", "-servername", long_name, "-alpn", long_alpn,
                                             "-max_send_frag", "512"), hello_done),
        "tls_python_sni": (python_ssl, hello_done),
        "openvpn_tcp": (openvpn(keys), None),
        "openvpn_tcp_tls_auth": (openvpn(keys, "--tls-auth", str(keys["ta"]), "1"), None),
        "openvpn_tcp_tls_crypt_v2": (openvpn(keys, "--tls-crypt-v2", str(keys["tcv2_client"])), None),
        "syslog_logger": (logger, None),
    }


def main(names: list[str]) -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="epollmux-capture-") as tmp:
        table = fixtures(openvpn_keys(Path(tmp)))
        unknown = set(names) - set(table)
        if unknown:
            print(f"unknown fixtures: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 1
        failed = 0
        for name in names or list(table):
            argv, stop = table[name]
            data = capture(argv, stop)
            if not data:
                print(f"{name}: nothing received", file=sys.stderr)
                failed += 1
                continue
            (OUT_DIR / f"{name}.bin").write_bytes(data)
            print(f"{name}: {len(data)} bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
