"""Real peers for end-to-end tests (nginx, iperf3, sshd, ...), each started in a tmp dir and ended by PID."""

from __future__ import annotations

import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import free_port, wait_port


def need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if path is None:
        pytest.fail(f"{tool} is not installed: `make test` installs it (Debian package list in the Makefile)")
    return path


class Process:
    def __init__(self, cmd: list[str], log: Path, **kw):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Nginx(Process):
    """nginx in one process (master_process off), serving `servers` (nginx server blocks) from root."""

    def __init__(self, tmp: Path, servers: str, ports: list[int]):
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "logs").mkdir(exist_ok=True)
        conf = tmp / "nginx.conf"
        conf.write_text(textwrap.dedent(f"""
            daemon off;
            master_process off;
            worker_processes 1;
            error_log {tmp}/logs/error.log warn;
            pid {tmp}/nginx.pid;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {tmp}/body;
                proxy_temp_path {tmp}/proxy;
                fastcgi_temp_path {tmp}/fastcgi;
                uwsgi_temp_path {tmp}/uwsgi;
                scgi_temp_path {tmp}/scgi;
                default_type application/octet-stream;
            """) + textwrap.indent(textwrap.dedent(servers), "    ") + "}\n")
        super().__init__([need("nginx"), "-p", str(tmp), "-c", str(conf)], tmp / "nginx.out")
        for port in ports:
            wait_port(port, proc=self.proc)


@pytest.fixture
def nginx(tmp_path):
    started = []

    def make(servers: str, ports: list[int]) -> Nginx:
        n = Nginx(tmp_path / f"nginx{len(started)}", servers, ports)
        started.append(n)
        return n

    yield make
    for n in started:
        n.stop()


@pytest.fixture
def iperf3_server(tmp_path):
    port = free_port()
    p = Process([need("iperf3"), "-s", "-B", "127.0.0.1", "-p", str(port)], tmp_path / "iperf3.log")
    wait_port(port, proc=p.proc)
    yield port
    p.stop()
