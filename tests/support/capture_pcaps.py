#!/usr/bin/env python3
"""Re-capture tests/fixtures/pcap/*.pcap: real clients' connections, recorded by tcpdump on loopback.

For each capture: listen on a random loopback port (IPv4 or IPv6), start tcpdump on that port with the
link type asked for (-i lo: Ethernet; -i any: Linux cooked v2, or v1 with -y LINUX_SLL), wait until it
listens, run the client, answer nothing, and after CAPTURE_SECONDS end the client and tcpdump by PID.

Needs (Debian packages): tcpdump, curl, openssh-client; root (or CAP_NET_RAW) for tcpdump.
Usage: python3 tests/support/capture_pcaps.py [NAME ...]     (default: all)
Only loopback addresses are used. The tests only rely on what tests/test_explain.py states about them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent     # tests/
OUT_DIR = HERE / "fixtures" / "pcap"
CAPTURE_SECONDS = 1.5
HOST = "www.example.org"


def client_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def curl_tls(host: str, port: int) -> list[str]:
    addr = f"[{host}]" if ":" in host else host
    return ["curl", "-sk", "--max-time", "1", "--http1.1", "--resolve", f"{HOST}:{port}:{addr}",
            f"https://{HOST}:{port}/"]


def curl_http(host: str, port: int) -> list[str]:
    addr = f"[{host}]" if ":" in host else host
    return ["curl", "-s", "--max-time", "1", "--http1.1", "--resolve", f"{HOST}:{port}:{addr}",
            f"http://{HOST}:{port}/index.html"]


def ssh(host: str, port: int) -> list[str]:
    return ["ssh", "-F", "/dev/null", "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=1", f"capture@{host}", "true"]


# name -> (client argv builder, listen host, tcpdump interface and link-type arguments)
CAPTURES = {
    "tls_curl_ipv4_ethernet": (curl_tls, "127.0.0.1", ["-i", "lo"]),
    "http_curl_ipv6_sll": (curl_http, "::1", ["-i", "any", "-y", "LINUX_SLL"]),
    "ssh_openssh_ipv4_sll2": (ssh, "127.0.0.1", ["-i", "any", "-y", "LINUX_SLL2"]),
    "tls_curl_ipv6_ethernet": (curl_tls, "::1", ["-i", "lo"]),
}


def serve_silently(server: socket.socket, stop: threading.Event) -> None:
    """Accept and read whatever comes, answer nothing (the ssh client sends its banner first anyway)."""
    server.settimeout(0.1)
    conns = []
    while not stop.is_set():
        try:
            conn, _ = server.accept()
            conn.settimeout(0.1)
            conns.append(conn)
        except socket.timeout:
            pass
        for conn in conns:
            try:
                conn.recv(65536)
            except OSError:
                pass
    for conn in conns:
        conn.close()


def capture(name: str) -> None:
    build, host, link = CAPTURES[name]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family)
    server.bind((host, 0))
    server.listen(4)
    port = server.getsockname()[1]
    out = OUT_DIR / f"{name}.pcap"
    dump = subprocess.Popen(["tcpdump", "-U", "-n", "-s", "0", *link, "-w", str(out), "tcp", "port", str(port)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        for _ in range(5):                              # "tcpdump: listening on ..." once it captures
            line = dump.stderr.readline().decode()
            if "listening on" in line or not line:
                break
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line}")
        stop = threading.Event()
        thread = threading.Thread(target=serve_silently, args=(server, stop), daemon=True)
        thread.start()
        client = subprocess.Popen(build(host, port), env=client_env(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(CAPTURE_SECONDS)
        if client.poll() is None:
            client.send_signal(signal.SIGTERM)
        client.wait(5)
        stop.set()
        thread.join(2)
        time.sleep(0.2)
    finally:
        dump.send_signal(signal.SIGTERM)
        dump.wait(5)
        server.close()
    print(f"{out}: {out.stat().st_size} bytes")


def main(names: list[str]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in names or list(CAPTURES):
        capture(name)


if __name__ == "__main__":
    main(sys.argv[1:])
