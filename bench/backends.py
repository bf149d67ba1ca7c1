"""The servers behind the subjects: iperf3 (bulk), nginx (connection rate), an echo server (idle).

Owns: starting each on 127.0.0.1 with a config written to the run's temp dir, and stopping it
by PID. nginx runs `worker_processes 1`, `access_log off`, and answers every request with a
small static body (`return 200`), keep-alive unbounded so keep-alive runs measure relaying.
"""

from __future__ import annotations

import os
import sys

from bench.procs import HOST, Proc

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


class Nginx(Backend):
    name = "nginx"

    def argv(self):
        root = os.path.join(self.tmpdir, "nginx")
        os.makedirs(os.path.join(root, "logs"), exist_ok=True)
        conf = os.path.join(root, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen {HOST}:{self.port} backlog=4096;
        default_type text/plain;
        location / {{ return 200 "{BODY.strip()}\\n"; }}
    }}
}}
""")
        return ["nginx", "-p", root, "-e", f"{root}/logs/error.log", "-c", conf]


class Echo(Backend):
    name = "echo-server"

    def argv(self):
        return [sys.executable, "-m", "bench.echo", HOST, str(self.port)]

    def start(self):
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = Proc(self.name, self.argv(), self.tmpdir, cwd=repo)
        self.proc.wait_listening(self.port)
        return self
