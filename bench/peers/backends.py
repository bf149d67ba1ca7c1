"""The servers behind the subjects: iperf3 (bulk), nginx (connection rate), an echo server (idle).

Owns: starting each on 127.0.0.1 with a config written to the run's temp dir, and stopping it
by PID. nginx runs `worker_processes 1`, `access_log off`, and answers every request with a
small static body (`return 200`), keep-alive unbounded so keep-alive runs measure relaying; for the
TLS sections it can also listen with TLS 1.3 and serve a large sparse file (`SparseFile`) at /bulk.
"""

from __future__ import annotations

import os
import sys
import tempfile

from bench.harness.procs import HOST, Proc

BODY = "hello from nginx behind the relay\n"


class Backend:
    name = "?"

    def __init__(self, tmpdir: str, port: int):
        self.tmpdir = tmpdir
        self.port = port
        self.proc: Proc | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "Backend":
        self.proc = Proc(self.name, self.argv(), self.tmpdir)
        self.proc.wait_listening(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


class Iperf3(Backend):
    name = "iperf3-server"

    def argv(self):
        return ["iperf3", "-s", "-B", HOST, "-p", str(self.port)]


def nginx_config(root: str, plain_port: int | None = None, tls_port: int | None = None,
                 cert: tuple[str, str] | None = None, resumption: bool = True,
                 bulk_file: str | None = None) -> str:
    """nginx.conf for 1 worker: `/` answers BODY, `/bulk` sends bulk_file (sendfile on the plain port),
    on a plain port and/or a TLS 1.3 port (cert = (certificate, key); resumption off = no tickets, no cache)."""
    def server(listen: str, tls: str = "") -> str:
        bulk = f"location = /bulk {{ alias {bulk_file}; default_type application/octet-stream; }}" if bulk_file else ""
        return f"""    server {{
        listen {listen} backlog=4096;
        default_type text/plain;
{tls}        location / {{ return 200 "{BODY.strip()}\\n"; }}
        {bulk}
    }}
"""
    servers = server(f"{HOST}:{plain_port}") if plain_port else ""
    if tls_port:
        tickets = "on" if resumption else "off"
        cache = "none" if resumption else "off"
        servers += server(f"{HOST}:{tls_port} ssl", f"""        ssl_certificate {cert[0]};
        ssl_certificate_key {cert[1]};
        ssl_protocols TLSv1.3;
        ssl_session_tickets {tickets};
        ssl_session_cache {cache};
""")
    return f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{servers}}}
"""


def nginx_argv(tmpdir: str, ident: str, config: str) -> list[str]:
    """Write config under tmpdir/ident and return nginx's command line."""
    root = os.path.join(tmpdir, ident)
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(config.replace("{root}", root))
    return ["nginx", "-p", root, "-e", f"{root}/logs/error.log", "-c", conf]


class Nginx(Backend):
    """Plain HTTP on `port`; with tls_port and cert also HTTPS (TLS 1.3) from the same worker."""
    name = "nginx"

    def __init__(self, tmpdir: str, port: int, tls_port: int | None = None,
                 cert: tuple[str, str] | None = None, bulk_file: str | None = None):
        super().__init__(tmpdir, port)
        self.tls_port = tls_port
        self.cert = cert
        self.bulk_file = bulk_file

    @property
    def tls_address(self) -> tuple[str, int]:
        return (HOST, self.tls_port)

    def argv(self):
        config = nginx_config("{root}", self.port, self.tls_port, self.cert, bulk_file=self.bulk_file)
        return nginx_argv(self.tmpdir, self.name, config)

    def start(self):
        super().start()
        if self.tls_port:
            self.proc.wait_listening(self.tls_port)
        return self


class SparseFile:
    """A large file of zeros that occupies no memory: sparse, on tmpfs when /dev/shm is one (reading its
    holes maps the zero page), removed on exit. What nginx serves for bulk TLS runs."""

    def __init__(self, size: int = 64 << 30):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, self.path = tempfile.mkstemp(prefix="epollmux-bench-bulk.", dir=base)
        os.ftruncate(fd, size)
        os.fchmod(fd, 0o644)       # nginx's workers run as another user
        os.close(fd)
        self.size = size

    def __enter__(self) -> "SparseFile":
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Echo(Backend):
    name = "echo-server"

    def argv(self):
        return [sys.executable, "-m", "bench.peers.echo", HOST, str(self.port)]

    def start(self):
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = Proc(self.name, self.argv(), self.tmpdir, cwd=repo)
        self.proc.wait_listening(self.port)
        return self
