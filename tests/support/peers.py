"""Real peers for end-to-end tests (nginx, iperf3, sshd, ...), each started in a tmp dir and ended by PID."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from support.net import each_started, free_port, wait_port


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


class HAProxy(Process):
    """/usr/sbin/haproxy in the foreground (-db), one TCP frontend to one `server` line; ended by its PID.

    `bind` is appended to each bind line (e.g. " accept-proxy"); `ipv6` adds a [::1] bind on the same port."""

    def __init__(self, tmp: Path, server: str, bind: str = "", ipv6: bool = False,
                 unique_id: str = "%ci:%cp"):
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        binds = f"  bind 127.0.0.1:{self.port}{bind}\n" + (f"  bind [::1]:{self.port}{bind}\n" if ipv6 else "")
        cfg = tmp / "haproxy.cfg"
        cfg.write_text("global\n  nbthread 1\n  maxconn 64\n"
                       "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n"
                       f"frontend f\n{binds}  unique-id-format {unique_id}\n  default_backend b\n"
                       f"backend b\n  server s {server}\n")
        super().__init__([need("haproxy"), "-db", "-f", str(cfg)], tmp / "haproxy.log")
        wait_port(self.port, proc=self.proc)


@pytest.fixture
def nginx(tmp_path):
    """nginx(servers, ports) -> a started Nginx serving those server blocks; ended by PID afterwards."""
    yield from each_started(lambda n, servers, ports: Nginx(tmp_path / f"nginx{n}", servers, ports))


@pytest.fixture
def haproxy(tmp_path):
    """haproxy(server, bind="", **kw) -> a started HAProxy in front of `server`; ended by PID afterwards."""
    yield from each_started(lambda n, server, bind="", **kw: HAProxy(tmp_path / f"haproxy{n}", server, bind, **kw))


@pytest.fixture
def iperf3_server(tmp_path):
    port = free_port()
    p = Process([need("iperf3"), "-s", "-B", "127.0.0.1", "-p", str(port)], tmp_path / "iperf3.log")
    wait_port(port, proc=p.proc)
    yield port
    p.stop()


def wait_text(path: Path, needle: str, timeout: float, proc: subprocess.Popen | None = None) -> str:
    """Wait until the file at path contains needle; return its text (fails early if proc exits)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{needle!r} not in {path} (process exited with {proc.returncode}):\n{text[-3000:]}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"{needle!r} not in {path} after {timeout}s:\n{text[-3000:]}")
        time.sleep(0.05)


def tls_server_block(port: int, cert: Path, key: Path, body: str, http2: bool = False) -> str:
    """An nginx server block: TLS on 127.0.0.1:port with cert/key, answering every path with body."""
    return f"""
server {{
    listen 127.0.0.1:{port} ssl{' http2' if http2 else ''};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ default_type text/plain; return 200 "{body}\\n"; }}
}}
"""


def text_server_block(port: int, body: str) -> str:
    """An nginx server block: plain HTTP on 127.0.0.1:port, answering every path with body."""
    return f"""
server {{
    listen 127.0.0.1:{port};
    location / {{ default_type text/plain; return 200 "{body}\\n"; }}
}}
"""


class Sshd(Process):
    """OpenSSH sshd in the foreground on 127.0.0.1:port with its own host key, config and authorized key.

    Logs in the user running the tests with a fresh client key (`ssh_argv`). sshd needs its privilege
    separation directory /run/sshd even when every file it reads is in tmp: it is created if missing.
    """

    def __init__(self, tmp: Path, port: int):
        tmp.mkdir(parents=True, exist_ok=True)
        keygen = need("ssh-keygen")
        self.port = port
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.host_key, self.client_key = tmp / "host_ed25519", tmp / "client_ed25519"
        for key in (self.host_key, self.client_key):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        authorized = tmp / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        conf = tmp / "sshd_config"
        conf.write_text(textwrap.dedent(f"""\
            Port {port}
            ListenAddress 127.0.0.1
            HostKey {self.host_key}
            AuthorizedKeysFile {authorized}
            PidFile {tmp}/sshd.pid
            StrictModes no
            UsePAM no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            Subsystem sftp internal-sftp
            LogLevel VERBOSE
            """))
        if not Path("/run/sshd").is_dir():
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.log_path = tmp / "sshd.log"
        super().__init__([need("sshd"), "-D", "-e", "-f", str(conf)], self.log_path)
        wait_port(port, proc=self.proc)

    def ssh_argv(self, port: int, command: str) -> list[str]:
        """ssh to 127.0.0.1:port (this sshd, or something in front of it) running command."""
        return [need("ssh"), "-F", "/dev/null", "-p", str(port), "-i", str(self.client_key),
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
                f"{self.user}@127.0.0.1", command]


@pytest.fixture
def sshd(tmp_path):
    """sshd() -> a started Sshd on a free port; ended by PID afterwards."""
    yield from each_started(lambda n: Sshd(tmp_path / f"sshd{n}", free_port()))


def openvpn_keys(tmp: Path) -> dict[str, Path]:
    """A throwaway self-signed EC certificate and key, used by both ends as CA, cert and key."""
    tmp.mkdir(parents=True, exist_ok=True)
    keys = {"cert": tmp / "cert.pem", "key": tmp / "key.pem"}
    subprocess.run([need("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=epollmux-openvpn", "-keyout", str(keys["key"]),
                    "-out", str(keys["cert"])], check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return keys


class OpenVPN(Process):
    """OpenVPN in TCP mode with `--dev null` (no tun device, no privileges), TLS with throwaway keys.

    role "server": `--proto tcp-server` on 127.0.0.1:port; role "client": `--proto tcp-client` to 127.0.0.1:port.
    proto "udp": `--proto udp` both ways instead (the server binds 127.0.0.1:port). Both log "Initialization Sequence Completed" once the TLS handshake and the data channel are up.
    """

    READY = "Initialization Sequence Completed"

    def __init__(self, tmp: Path, role: str, port: int, keys: dict[str, Path], proto: str = "tcp"):
        tmp.mkdir(parents=True, exist_ok=True)
        common = ["--dev", "null", "--verb", "3", "--ca", str(keys["cert"]), "--cert", str(keys["cert"]),
                  "--key", str(keys["key"]), "--verify-x509-name", "epollmux-openvpn", "name"]
        if proto == "udp":
            common += ["--proto", "udp"]
        if role == "server":
            cmd = ["--proto", "tcp-server"] if proto == "tcp" else []
            cmd += ["--local", "127.0.0.1", "--lport", str(port), "--tls-server", "--dh", "none"]
        elif role == "client":
            cmd = ["--proto", "tcp-client"] if proto == "tcp" else []
            cmd += ["--remote", "127.0.0.1", str(port), "--nobind", "--tls-client", "--connect-retry-max", "3"]
        else:
            raise ValueError(role)
        self.log_path = tmp / f"openvpn-{role}.log"
        super().__init__([need("openvpn"), *cmd, *common], self.log_path)
        if role == "server" and proto == "tcp":
            wait_port(port, proc=self.proc)
        elif role == "server":
            wait_text(self.log_path, "link local (bound)", 20.0, self.proc)

    def wait_ready(self, timeout: float = 20.0) -> str:
        return wait_text(self.log_path, self.READY, timeout, self.proc)


@pytest.fixture
def openvpn(tmp_path):
    """openvpn(role, port, keys) -> a started OpenVPN; ended by PID afterwards (last first)."""
    yield from each_started(lambda n, role, port, keys, proto="tcp": OpenVPN(tmp_path / f"openvpn{n}", role, port,
                                                                          keys, proto))


class H3Server(Process):
    """An aioquic HTTP/3 server (support/h3.py) on udp 127.0.0.1:port answering every request with `body`."""

    def __init__(self, tmp: Path, cert: Path, key: Path, body: bytes):
        import sys
        from support import h3
        from support.udp import free_udp_port
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.log_path = tmp / "h3.log"
        super().__init__([sys.executable, h3.__file__, str(cert), str(key), str(self.port), body.decode()],
                         self.log_path)
        wait_text(self.log_path, "serving", 20.0, self.proc)


@pytest.fixture
def h3server(tmp_path):
    """h3server(cert, key, body) -> a started aioquic HTTP/3 server; ended by PID afterwards."""
    yield from each_started(lambda n, cert, key, body: H3Server(tmp_path / f"h3-{n}", cert, key, body))
