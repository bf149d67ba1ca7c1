"""Why a route's probe said NEXT: a short reason for `--explain` and the debug log.

Owns: turning (probe, bytes, route options) into words such as "sni 'b.test' not in [a.test]" or
"no ALPN offered". Pure, and asked only after the fact (never on the serving path unless the debug
level is on): the verdict itself stays the probe's.  Must not import: socket, select, the reactor,
connection or config modules.
"""

from __future__ import annotations

from collections.abc import Mapping

from epollmux.wire import probes
from epollmux.wire.clienthello import HelloStatus, parse_client_hello


def _names(globs) -> str:
    return "[" + ", ".join(globs) + "]"


def why_next(probe: str, data: bytes, opts: Mapping[str, object], *, full: bool = False) -> str:
    """The reason `probe` said NEXT to `data` with these route options (full: no more bytes would come,
    so a probe still waiting was counted as NEXT)."""
    if probes.PROBES[probe].func(data, opts) is probes.Verdict.AGAIN:
        return f"still undecided after {len(data)} bytes, and no more will come" if full else "undecided"
    if probe == "tls":
        return _tls(data, opts)
    if probe == "http":
        return _http(data, opts)
    if probe == "regex":
        return "no pattern matched"
    return f"not {probe}"


def _tls(data: bytes, opts: Mapping[str, object]) -> str:
    hello = parse_client_hello(data)
    if hello.status is HelloStatus.NOT_TLS:
        return "not TLS" + (f" ({hello.reason})" if hello.reason else "")
    if hello.status is not HelloStatus.OK:
        return "malformed ClientHello" + (f" ({hello.reason})" if hello.reason else "")
    sni = opts.get("sni")
    if sni is not None:
        if hello.sni is None:
            return "no SNI sent"
        if not probes.glob_any(hello.sni, sni):
            return f"sni '{hello.sni}' not in {_names(sni)}"
    alpn = opts.get("alpn")
    if alpn is not None:
        if not hello.alpn:
            return "no ALPN offered"
        return f"alpn {_names(hello.alpn)} not in {_names(alpn)}"
    return "not matched"


def _http(data: bytes, opts: Mapping[str, object]) -> str:
    if probes.match_shapes(data, probes.HTTP1_SHAPES) is not probes.Verdict.MATCH:
        if probes.match_shapes(data, probes.HTTP_SHAPES) is probes.Verdict.MATCH:
            return "HTTP/2 prior knowledge: its Host cannot be read"
        return "not an HTTP request"
    host = probes.request_host(data)
    globs = opts.get("host") or ()
    if host is None:
        return "no single Host header"
    return f"host '{host}' not in {_names(globs)}"


def describe(routes, verdicts, data: bytes, *, full: bool = False) -> str:
    """`name=verdict` per route walked, each NEXT with its reason: what the debug log shows."""
    parts = []
    for route, verdict in zip(routes, verdicts):
        text = f"{route.name}={verdict.value}"
        if verdict is probes.Verdict.NEXT:
            text += f" ({why_next(route.probe, data, route.opts, full=full)})"
        parts.append(text)
    return " ".join(parts)
