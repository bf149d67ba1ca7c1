"""Every NEXT verdict carries a short why: the pure reasons, `--explain` and the debug log line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from support.daemon import REPO
from support.hello_builder import build_client_hello
from epollmux.wire import probes
from epollmux.wire.why import describe, why_next


def opts(probe: str, **raw) -> dict:
    return probes.prepare_options(probe, raw)


def test_tls_reasons():
    assert why_next("tls", build_client_hello(sni="b.test"), opts("tls", sni="a.test")) == "sni 'b.test' not in [a.test]"
    assert why_next("tls", build_client_hello(), opts("tls", sni="a.test")) == "no SNI sent"
    assert why_next("tls", build_client_hello(sni="a.test"), opts("tls", alpn=["h2"])) == "no ALPN offered"
    assert (why_next("tls", build_client_hello(alpn=["http/1.1"]), opts("tls", alpn=["h2", "h3"]))
            == "alpn [http/1.1] not in [h2, h3]")
    assert why_next("tls", b"SSH-2.0-x\r\n", {}).startswith("not TLS")


def test_other_probe_reasons():
    assert why_next("ssh", b"GET / HTTP/1.1\r\n", {}) == "not ssh"
    head = b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n"
    assert why_next("http", head, opts("http", host="a.test")) == "host 'b.test' not in [a.test]"
    assert why_next("http", b"GET / HTTP/1.1\r\n\r\n", opts("http", host="a.test")) == "no single Host header"
    assert why_next("http", b"\x16\x03\x01", {}) == "not an HTTP request"
    assert why_next("regex", b"hello", opts("regex", regex="^xyz")) == "no pattern matched"
    assert why_next("ssh", b"SS", {}, full=True) == "still undecided after 2 bytes, and no more will come"


class R:
    def __init__(self, name, probe, **raw):
        self.name, self.probe, self.opts = name, probe, opts(probe, **raw)


def test_describe_is_the_debug_line():
    routes = [R("ssh", "ssh"), R("web", "tls", sni="a.test"), R("other", "tls")]
    verdicts = [probes.Verdict.NEXT, probes.Verdict.NEXT, probes.Verdict.MATCH]
    assert (describe(routes, verdicts, build_client_hello(sni="b.test"))
            == "ssh=next (not ssh) web=next (sni 'b.test' not in [a.test]) other=match")


def test_explain_shows_why(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(textwrap.dedent("""
        [listen]
          [[main]]
          address = 127.0.0.1:4443
        [routes]
          [[h2only]]
          probe = tls
          alpn = h2
          backend = 127.0.0.1:1
          [[rest]]
          probe = any
          backend = 127.0.0.1:2
        """))
    capture = tmp_path / "hello.bin"
    capture.write_bytes(build_client_hello(sni="a.test"))
    out = subprocess.run([sys.executable, "-m", "epollmux", "-c", str(conf), "--explain", str(capture)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if "h2only" in l and "probe tls" in l)
    assert line.rstrip().endswith("(no ALPN offered)"), line
