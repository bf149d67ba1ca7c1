"""The things measured: TCP relays, TLS terminators and SNI routers started in front of a backend, each on its own port.

Owns: one class per subject, how it is configured (in a private temp dir), started, found
listening, measured (CPU and memory of its whole process tree) and stopped by PID, and how
its version is read. Every TCP relay gets the same job: forward everything from 127.0.0.1:port
to one backend, with no protocol sniffing (`probe = any`, sslh `--anyprot`).

Choices that matter for fairness (also written into RESULTS.md):
- epollmux runs `workers = 1` (one event loop; its supervisor process is counted too), so
  HAProxy runs with `nbthread 1`; all of a subject's processes are counted, so forking peers
  pay for their forks. `epollmux-adaptive-2w` (and `epollmux-splice-2w`) and `haproxy-2t` are the 2-core pair.
- HAProxy: TCP mode, `option splice-request` + `option splice-response` (splice forced both
  ways), and `tune.pipesize` equal to epollmux's `pipe_size` (1 MiB, its default) unless told otherwise.
- sslh and socat run as shipped (sslh-fork = Debian's /usr/sbin/sslh; socat with `fork`,
  its default 8 KiB buffer).

Terminators (`bench.sections.tls`) decrypt TLS 1.3 and forward plaintext to one nginx; each instance is built
for one certificate (`certs.Cert`) and with session resumption on or off:
- epollmux: a route with `tls_cert`/`tls_key`, `tls_min_version = 1.3`, `tls_resumption = yes|no`,
  `probe = any` (no sniffing, as in the TCP sections), `workers = 1` (or 2 for `epollmux-tls-2w`);
- stunnel (stunnel4, as shipped: a thread per connection, TCP_NODELAY both ways by default),
  `sslVersionMin = TLSv1.3`, resumption off = `sessionResume = no`;
- HAProxy `bind ... ssl crt` in TCP mode, `nbthread 1` (2 for `haproxy-tls-2t`), `ssl-min-ver TLSv1.3`,
  resumption off = `no-tls-tickets` and `tune.ssl.cachesize 0`;
- nginx-tls: no proxy, nginx (1 worker) terminates itself: the reference, like `direct` elsewhere.
SNI routers (`bench.sections.sniff`) pass TLS through untouched to an nginx that terminates it; the route
table is the example config's: ssh, tls with `sni`, http, any (HAProxy: `req.ssl_sni` and friends
behind `tcp-request inspect-delay`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench.harness.procs import HOST, CpuGroup, Proc, memory_kb
from bench.peers.backends import nginx_argv, nginx_config
from bench.peers.certs import Cert

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPE_SIZE = 1048576          # epollmux's default pipe_size; HAProxy gets the same tune.pipesize


class Subject:
    name = "?"
    label = "?"
    variant = ""      # set per instance when one section runs several configurations of a subject
    cwd = REPO        # where it runs (bench.tools.ab runs epollmux from other trees)

    def __init__(self, tmpdir: str, port: int, backend: tuple[str, int]):
        self.tmpdir = tmpdir
        self.port = port
        self.backend = backend
        self.proc: Proc | None = None

    @property
    def ident(self) -> str:
        """Unique among the instances of a run: names its config, log file and cgroup."""
        return f"{self.name}.{self.variant}" if self.variant else self.name

    # subclasses give argv (and write their config file)
    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "Subject":
        self.proc = Proc(self.ident, self.argv(), self.tmpdir, cwd=self.cwd, env=self.env(),
                         cgroup=CpuGroup.make(f"{self.ident}.{self.port}"))
        self.proc.wait_listening(self.port)
        return self

    def env(self) -> dict | None:
        return None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is None or self.proc.alive()

    def cpu(self) -> float:
        return self.proc.cpu() if self.proc else 0.0

    def cpu_user(self) -> float:
        """User-mode part of cpu(): time in the relay's own code rather than in the kernel."""
        return self.proc.cpu_user() if self.proc else 0.0

    @property
    def cpu_method(self) -> str:
        if self.proc is None:
            return "none"
        return "cgroup cpuacct" if self.proc.cgroup else "/proc tree (reaped children only)"

    def memory(self) -> dict[str, int]:
        return memory_kb(self.pid) if self.proc else {"rss_kb": 0, "pss_kb": 0, "uss_kb": 0, "processes": 0}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def path(self, name: str) -> str:
        return os.path.join(self.tmpdir, f"{self.ident}.{name}")


class Direct(Subject):
    """No relay: the load talks to the backend itself."""
    name, label = "direct", "direct (no proxy)"

    def __init__(self, tmpdir, port, backend):
        super().__init__(tmpdir, backend[1], backend)

    def start(self):
        return self


class Epollmux(Subject):
    relay = "splice"
    pipe_size = PIPE_SIZE
    global_extra = listen_extra = ""     # more lines for [global] and [[bench]] (the SNI router's)

    def __init__(self, tmpdir, port, backend, workers: int = 1):
        super().__init__(tmpdir, port, backend)
        self.workers = workers

    def argv(self):
        conf = self.path("conf")
        with open(conf, "w") as f:
            f.write(f"""[global]
relay = {self.relay}
workers = {self.workers}
log_level = warning
pipe_size = {self.pipe_size}
{self.global_extra}[listen]
  [[bench]]
  address = {HOST}:{self.port}
{self.listen_extra}[routes]
{self.routes()}""")
        return [sys.executable, "-m", "epollmux", "-c", conf]

    def routes(self) -> str:
        """The body of [routes]: here everything to the backend, unsniffed."""
        return f"""  [[all]]
  probe = any
  backend = {self.backend[0]}:{self.backend[1]}
"""

    def env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        return env


class EpollmuxAdaptive(Epollmux):
    """relay = adaptive, the default: copy while exchanges are small, splice once a stream is large."""
    name, label, relay = "epollmux-adaptive", "epollmux (adaptive)", "adaptive"


class EpollmuxSplice(Epollmux):
    name, label, relay = "epollmux-splice", "epollmux (splice)", "splice"


class EpollmuxCopy(Epollmux):
    name, label, relay = "epollmux-copy", "epollmux (copy)", "copy"


class EpollmuxSockmap(Epollmux):
    """The kernel relay (BPF sockmap): payload never wakes the worker."""
    name, label, relay = "epollmux-sockmap", "epollmux (sockmap)", "sockmap"


class EpollmuxSplice2(Epollmux):
    """Two workers (needs the multi-worker supervisor); compare with haproxy-2t, not in the defaults."""
    name, label, relay = "epollmux-splice-2w", "epollmux (splice, 2 workers)", "splice"

    def __init__(self, tmpdir, port, backend):
        super().__init__(tmpdir, port, backend, workers=2)


class EpollmuxAdaptive2(Epollmux):
    """The default relay with two workers: the 2-core pair of haproxy-2t (the 2-core connection-rate target)."""
    name, label, relay = "epollmux-adaptive-2w", "epollmux (adaptive, 2 workers)", "adaptive"

    def __init__(self, tmpdir, port, backend):
        super().__init__(tmpdir, port, backend, workers=2)


class Haproxy(Subject):
    name, label = "haproxy", "HAProxy (splice, nbthread 1)"
    nbthread = 1
    maxconn = 9000
    maxpipes = 512
    pipe_size = PIPE_SIZE      # None: HAProxy's default (the system pipe size, 64 KiB)
    splice = True              # option splice-request + splice-response

    def argv(self):
        conf = self.path("cfg")
        splice = ["option splice-request", "option splice-response"] if self.splice else []
        sections = {"global": [f"nbthread {self.nbthread}", f"maxconn {self.maxconn}", *self.tuning()],
                    "defaults": ["mode tcp", "timeout connect 5s", "timeout client 1h", "timeout server 1h", *splice],
                    **self.proxies()}
        with open(conf, "w") as f:
            for name, lines in sections.items():
                f.write(name + "\n" + "".join(f"    {line}\n" for line in lines))
        return ["haproxy", "-db", "-f", conf]

    def tuning(self) -> list[str]:
        """Lines of `global` after nbthread and maxconn."""
        return [f"maxpipes {self.maxpipes}"] + ([f"tune.pipesize {self.pipe_size}"] if self.pipe_size else [])

    def proxies(self) -> dict[str, list[str]]:
        """The frontend and backend sections: here everything to the backend."""
        return {"frontend bench": [f"bind {HOST}:{self.port}", "default_backend be"],
                "backend be": [f"server s1 {self.backend[0]}:{self.backend[1]}"]}


class Haproxy2(Haproxy):
    name, label = "haproxy-2t", "HAProxy (splice, nbthread 2)"
    nbthread = 2


class SslhSelect(Subject):
    name, label = "sslh-select", "sslh-select"
    binary = "sslh-select"

    def argv(self):
        return [self.binary, "-f", "-n", "-p", f"{HOST}:{self.port}",
                "--anyprot", f"{self.backend[0]}:{self.backend[1]}"]


class SslhFork(SslhSelect):
    name, label = "sslh-fork", "sslh-fork"
    binary = "sslh"


class Socat(Subject):
    name, label = "socat", "socat (fork)"

    def argv(self):
        return ["socat", f"TCP-LISTEN:{self.port},bind={HOST},reuseaddr,fork,backlog=4096",
                f"TCP:{self.backend[0]}:{self.backend[1]}"]


# --- TLS terminators ----------------------------------------------------------------------------
class TLSSubject(Subject):
    """Terminates TLS on `port` with `cert`, forwards plaintext to `backend`."""

    def __init__(self, tmpdir: str, port: int, backend: tuple[str, int], cert: Cert, resumption: bool,
                 bulk_file: str | None = None):
        Subject.__init__(self, tmpdir, port, backend)     # not Epollmux's: `workers` stays the class's
        self.cert = cert
        self.resumption = resumption
        self.bulk_file = bulk_file
        self.variant = f"{cert.kind}.{'resume' if resumption else 'full'}"


class EpollmuxTLS(TLSSubject, Epollmux):
    name, label = "epollmux-tls", "epollmux (1 worker)"
    workers = 1

    def routes(self):
        return f"""  [[tls]]
  probe = any
  tls_cert = {self.cert.cert}
  tls_key = {self.cert.key}
  tls_min_version = 1.3
  tls_resumption = {"yes" if self.resumption else "no"}
  backend = {self.backend[0]}:{self.backend[1]}
"""


class EpollmuxTLS2(EpollmuxTLS):
    name, label = "epollmux-tls-2w", "epollmux (2 workers)"
    workers = 2


class Stunnel(TLSSubject):
    name, label = "stunnel", "stunnel (threads)"

    def argv(self):
        conf = self.path("conf")
        with open(conf, "w") as f:
            f.write(f"""foreground = yes
pid =
debug = warning
[bench]
accept = {HOST}:{self.port}
connect = {self.backend[0]}:{self.backend[1]}
cert = {self.cert.cert}
key = {self.cert.key}
sslVersionMin = TLSv1.3
sessionResume = {"yes" if self.resumption else "no"}
""")
        return ["stunnel", conf]


class HaproxyTLS(TLSSubject, Haproxy):
    name, label = "haproxy-tls", "HAProxy (nbthread 1)"
    nbthread = 1
    splice = False

    def tuning(self):
        off = not self.resumption
        return [f"ssl-default-bind-options ssl-min-ver TLSv1.3{' no-tls-tickets' if off else ''}",
                *(["tune.ssl.cachesize 0"] if off else [])]

    def proxies(self):
        proxies = super().proxies()
        proxies["frontend bench"][0] += f" ssl crt {self.cert.combined}"
        return proxies


class HaproxyTLS2(HaproxyTLS):
    name, label = "haproxy-tls-2t", "HAProxy (nbthread 2)"
    nbthread = 2


class NginxTLS(TLSSubject):
    """No proxy: nginx terminates TLS itself and serves the same body and bulk file."""
    name, label = "nginx-tls", "direct (nginx terminates)"

    def argv(self):
        config = nginx_config("{root}", tls_port=self.port, cert=self.cert.pair, resumption=self.resumption,
                              bulk_file=self.bulk_file)
        return nginx_argv(self.tmpdir, self.ident, config)


# --- SNI routing in front of a TLS nginx (passthrough) -----------------------------------------------
class SNIRouter(Subject):
    """Routes by the ClientHello's SNI: `sni` to backend (nginx's TLS port); ssh, http and anything else to
    `plain` (never used by the load, there so the table is the example config's)."""

    def __init__(self, tmpdir: str, port: int, backend: tuple[str, int], plain: tuple[str, int], sni: str):
        Subject.__init__(self, tmpdir, port, backend)
        self.plain = plain
        self.sni = sni


class EpollmuxSNI(SNIRouter, Epollmux):
    name, label = "epollmux-sni", "epollmux (ssh, tls sni, http, any)"
    workers = 1
    global_extra = "probe_timeout = 2.0\n"
    listen_extra = "  routes = ssh, tls, http, fallback\n"

    def routes(self):
        plain = f"{self.plain[0]}:{self.plain[1]}"
        return f"""  [[ssh]]
  probe = ssh
  backend = {plain}
  [[tls]]
  probe = tls
  sni = {self.sni}
  backend = {self.backend[0]}:{self.backend[1]}
  [[http]]
  probe = http
  backend = {plain}
  [[fallback]]
  probe = any
  backend = {plain}
"""


class HaproxySNI(SNIRouter, Haproxy):
    name, label = "haproxy-sni", "HAProxy (req.ssl_sni, nbthread 1)"

    def proxies(self):
        return {"frontend bench": [f"bind {HOST}:{self.port}", "tcp-request inspect-delay 2s",
                                   "acl ssh req.payload(0,4) -m bin 5353482d", "tcp-request content accept if ssh",
                                   "tcp-request content accept if { req.ssl_hello_type 1 }",
                                   "tcp-request content accept if HTTP",
                                   f"use_backend tls if {{ req.ssl_sni -i {self.sni} }}",
                                   "use_backend plain if ssh", "use_backend plain if HTTP", "default_backend plain"],
                "backend tls": [f"server s1 {self.backend[0]}:{self.backend[1]}"],
                "backend plain": [f"server s1 {self.plain[0]}:{self.plain[1]}"]}


RELAYS = {cls.name: cls for cls in (Direct, EpollmuxAdaptive, EpollmuxSplice, EpollmuxCopy, Haproxy, SslhSelect, SslhFork, Socat,
                                    EpollmuxSplice2, EpollmuxAdaptive2, Haproxy2, EpollmuxSockmap)}
TERMINATORS = {cls.name: cls for cls in (NginxTLS, EpollmuxTLS, Stunnel, HaproxyTLS, EpollmuxTLS2, HaproxyTLS2)}
ROUTERS = {cls.name: cls for cls in (EpollmuxSNI, HaproxySNI)}
ALL = {**RELAYS, **TERMINATORS, **ROUTERS}
DEFAULT = ["direct", "epollmux-adaptive", "epollmux-splice", "epollmux-copy", "haproxy", "sslh-select", "sslh-fork", "socat",
           "epollmux-adaptive-2w", "haproxy-2t",     # issue 19's 2-core connection-rate target
           "nginx-tls", "epollmux-tls", "stunnel", "haproxy-tls", "epollmux-sni", "haproxy-sni"]


def versions() -> dict[str, str]:
    """Version strings of every peer and tool used, read from the binaries themselves."""
    def first(argv, pattern=None):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable ({exc})"
        text = (out.stdout + out.stderr).strip()
        if pattern:
            m = re.search(pattern, text)
            return m.group(0) if m else text.splitlines()[0] if text else "?"
        return text.splitlines()[0] if text else "?"

    sys.path.insert(0, REPO)
    try:
        from epollmux import __version__ as epollmux_version
    finally:
        sys.path.pop(0)
    commit = first(["git", "-C", REPO, "describe", "--always", "--dirty"])
    return {
        "epollmux": f"{epollmux_version} (git {commit})",
        "python": sys.version.split()[0],
        "haproxy": first(["haproxy", "-v"], r"HAProxy version \S+"),
        "sslh": first(["sslh", "-V"]),
        "sslh-select": first(["sslh-select", "-V"]),
        "socat": first(["socat", "-V"], r"socat version \S+"),
        "nginx": first(["nginx", "-v"]),
        "iperf3": first(["iperf3", "--version"]),
        "wrk": first(["wrk", "-v"], r"wrk \S+"),
        "stunnel": first(["stunnel", "-version"], r"stunnel \S+"),
        "openssl": first(["openssl", "version"]),
        "curl": first(["curl", "--version"], r"curl \S+"),
    }


def log_summary(subject) -> dict:
    """How many lines the subject logged (epollmux runs at `log_level = warning`) and the last few."""
    if subject.proc is None:
        return {}
    try:
        with open(subject.proc.log_path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {"log_lines": None}
    return {"log_lines": len(lines), "log_tail": lines[-3:]}
