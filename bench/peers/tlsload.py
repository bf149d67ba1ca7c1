"""TLS clients of the TLS sections: a one-off check of a subject, and bulk downloads with curl.

Owns: `check()` (two HTTPS requests with Python's ssl, the second offering the first's session: the
version, cipher and whether the server resumed, so a run shows every subject negotiated the same
thing and that `resumption = off` really is off) and `bulk()` (N parallel `curl --http1.1` downloads
of nginx's /bulk for a fixed time: MB/s one way, server to client). Handshake and request loads are
wrk's (`bench.sections.connrate.wrk` with scheme https): wrk offers the session it got on each connection
slot, so against a server with resumption on nearly all its handshakes are resumed, and against one
with resumption off all are full.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

from bench.harness.procs import HOST

REQUEST = "GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE       # self-signed bench certificates; no client verifies (wrk, curl -k)
    return ctx


def check(port: int, server_name: str = "bench.example", timeout: float = 5.0) -> dict:
    """Two requests on fresh connections; the second offers the first one's session."""
    ctx = _client_context()
    session, out = None, {}
    try:
        for attempt in ("first", "second"):
            with socket.create_connection((HOST, port), timeout=timeout) as raw:
                with ctx.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
                    tls.sendall(REQUEST.format(name=server_name).encode())
                    data = b""
                    while len(data) < 65536:
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
                    if attempt == "first":
                        out.update(version=tls.version(), cipher=tls.cipher()[0], status=status)
                    else:
                        out["resumed"] = tls.session_reused
                    session = tls.session
    except (OSError, ssl.SSLError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def bulk(port: int, seconds: float, streams: int, path: str = "/bulk") -> dict:
    """`streams` parallel curl downloads for `seconds`: bytes received, MB/s (10**6 bytes), failures."""
    argv = ["curl", "-sk", "--http1.1", "-o", "/dev/null", "--max-time", f"{seconds:g}",
            "-w", "%{size_download} %{time_total} %{http_code}\n", f"https://{HOST}:{port}{path}"]
    t0 = time.monotonic()
    procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for _ in range(streams)]
    total, longest, failures = 0, 0.0, 0
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=seconds + 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failures += 1
            continue
        fields = out.split()
        # exit 28 = --max-time reached: the expected end of a timed download
        if len(fields) != 3 or fields[2] != "200" or proc.returncode not in (0, 28):
            failures += 1
            continue
        total += int(float(fields[0]))
        longest = max(longest, float(fields[1]))
    res = {"bytes": total, "streams": streams, "failures": failures, "wall_s": time.monotonic() - t0}
    if total and longest:
        res["mb_per_s"] = total / 1e6 / longest
        res["mb"] = total / 1e6
    else:
        res["error"] = f"no bytes received ({failures} of {streams} downloads failed)"
    return res
