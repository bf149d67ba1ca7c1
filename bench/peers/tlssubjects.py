"""The TLS-aware things measured: TLS terminators (bench.sections.tls) and SNI routers (bench.sections.sniff).

Owns: one class per subject, its config (written to the run's temp dir), and its version-independent
fairness choices. Starting, CPU accounting and stopping by PID come from `subjects.Subject`, the
frame of the epollmux and HAProxy configs from `subjects.Epollmux` and `subjects.Haproxy`.

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

from bench.peers.backends import nginx_argv, nginx_config
from bench.peers.certs import Cert
from bench.harness.procs import HOST
from bench.peers.subjects import Epollmux, Haproxy, Subject


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


TERMINATORS = {cls.name: cls for cls in (NginxTLS, EpollmuxTLS, Stunnel, HaproxyTLS, EpollmuxTLS2, HaproxyTLS2)}
ROUTERS = {cls.name: cls for cls in (EpollmuxSNI, HaproxySNI)}
ALL = {**TERMINATORS, **ROUTERS}
DEFAULT = ["nginx-tls", "epollmux-tls", "stunnel", "haproxy-tls", "epollmux-sni", "haproxy-sni"]


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
