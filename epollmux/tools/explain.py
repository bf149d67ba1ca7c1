"""`epollmux -c FILE --explain CAPTURE...`: what the daemon would do with a client's first bytes. No network.

Owns: reading a capture (a file of first bytes, or a pcap/pcapng whose first connection's client payload
pcap.py extracts), replaying the routing decision (README "How a connection is routed") over it per listener with the same pure pieces the daemon uses
(proxyproto.parse, sniff.decide, the probes, sniff.names, proxyout.header), and the report:
each route's probe verdict, the route chosen and why, SNI/ALPN/Host seen, the backend and the PROXY header
the route would send. A pcap's packets are replayed one by one (the daemon decides on what it has peeked
so far); a file of bytes is one peek. A pcap's UDP flows are explained by explainudp. Must not open sockets
or start anything.
Must not import what tools/ must not (README "Architecture").
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field

from epollmux.wire import clienthello, proxyout, proxyproto, sniff, why
from epollmux.tools import explainudp, pcap
from epollmux.wire.probes import PROBES, Verdict

EXAMPLE_SRC = {4: ("192.0.2.1", 50000), 6: ("2001:db8::1", 50000)}     # documentation addresses
EXAMPLE_UNIQUE_ID = b"explain"


@dataclass
class Capture:
    path: str
    data: bytes
    steps: list[int]                         # prefix lengths the daemon could have peeked, in order
    kind: str                                # "bytes" or "pcap (<link>)"
    src: tuple[str, int] | None = None       # from a pcap
    dst: tuple[str, int] | None = None
    closed: bool = False                     # the client closed (FIN/RST) after these bytes
    notes: list[str] = field(default_factory=list)


def load(path: str, limit: int) -> Capture:
    """Read a capture file; OSError or pcap.CaptureError if it cannot be used."""
    with open(path, "rb") as f:
        raw = f.read(64 << 20)
    if not pcap.is_capture(raw):
        if not raw:
            raise pcap.CaptureError("empty file")
        return Capture(path, raw, [len(raw)], "bytes")
    flow = pcap.first_client_payload(raw, limit)
    capture = Capture(path, flow.data, flow.steps, f"pcap ({flow.link})", flow.client, flow.server,
                      flow.client_closed)
    if flow.gap:
        capture.notes.append("a segment is missing from the capture: bytes after the gap are not used")
    return capture


def main(cfg, paths: list[str], out=None) -> int:
    """Explain each capture against cfg; 0, or 1 if a capture could not be read."""
    out = out or sys.stdout
    code = 0
    for path in paths:
        flows = []
        try:
            flows = _udp_flows(path)
            if flows:
                out.write(explainudp.explain_flows(cfg, path, flows))
            capture = load(path, cfg.settings.max_probe_bytes)
        except pcap.CaptureError as exc:
            if flows:                   # a UDP-only capture: no TCP connection to explain
                continue
            print(f"{path}: {exc}", file=sys.stderr)
            code = 1
            continue
        except OSError as exc:
            print(f"{path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            code = 1
            continue
        out.write(explain(cfg, capture))
    return code


def _udp_flows(path: str) -> list:
    """The UDP flows of a pcap file ([] for a file of bytes or a capture without UDP)."""
    with open(path, "rb") as f:
        raw = f.read(64 << 20)
    return pcap.udp_flows(raw) if pcap.is_capture(raw) else []


def explain(cfg, capture: Capture) -> str:
    lines = [f"capture {capture.path}: {capture.kind}, {len(capture.data)} bytes"
             + (f" in {len(capture.steps)} steps" if len(capture.steps) > 1 else "")]
    if capture.src:
        lines.append(f"  connection {_endpoint(capture.src)} -> {_endpoint(capture.dst)}"
                     + (", then the client closed" if capture.closed else ""))
    lines.append(f"  first bytes: {_preview(capture.data)}")
    lines += [f"  note: {n}" for n in capture.notes]
    for listener in cfg.listeners:
        if getattr(listener, "udp", False):         # its routes take datagrams (explainudp), not a stream
            continue
        lines.append("")
        lines += _listener(cfg, listener, capture)
    return "\n".join(lines) + "\n\n"


def _listener(cfg, listener, capture: Capture) -> list[str]:
    addresses = ", ".join(a.text for a in listener.addresses)
    hit = capture.dst is not None and any(_port_of(a) == capture.dst[1] for a in listener.addresses)
    lines = [f"listener {listener.name} ({addresses})" + ("  <- the capture's destination port" if hit else "")]
    data, steps, src, dst = capture.data, capture.steps, capture.src, capture.dst
    if listener.proxy_protocol != "none":
        if src is not None and not listener.trusted.contains(src[0]):
            return lines + [f"  PROXY header expected, but {src[0]} is not in trusted", "  chosen: none, close "
                            "(proxy-untrusted)"]
        result = proxyproto.parse(data, listener.proxy_protocol)
        if result.status is proxyproto.Status.NEED_MORE:
            return lines + ["  PROXY header expected: incomplete", "  chosen: none, waiting for the rest of the "
                            "PROXY header, then close (proxy-timeout)"]
        if result.status is proxyproto.Status.INVALID:
            return lines + [f"  PROXY header expected: invalid ({result.reason})", "  chosen: none, close "
                            "(proxy-invalid)"]
        lines.append(f"  PROXY header in: v{result.version} {result.command} {result.src or '-'} -> {result.dst or '-'}"
                     f" ({result.length} bytes, taken off the stream)")
        if result.src is not None and result.src.port is not None:
            src, dst = (result.src.host, result.src.port), (result.dst.host, result.dst.port)
        data = data[result.length:]
        steps = [s - result.length for s in steps if s > result.length] or [len(data)]
    if src is not None and listener.access is not None and not listener.access.permits(src[0]):
        return lines + [f"  client {src[0]} is refused by the listener's allow/deny", "  chosen: none, close (denied)"]
    routes = listener.routes
    names = sniff.names(data).fields() if data else {}
    seen = ", ".join(f"{k} {v}" for k, v in names.items() if v)
    lines.append(f"  seen: {seen or 'no SNI, ALPN or Host'}")
    decision, used, how = _replay(cfg, listener, data, steps, capture.closed)
    full = capture.closed or used >= cfg.settings.max_probe_bytes
    lines += _verdicts(routes, data[:used], decision, full)
    if decision is not None and decision.route is not None:
        route = routes[decision.route]
        lines.append(f"  chosen: route {route.name} ({how})")
    elif decision is not None:
        lines.append(f"  chosen: none, close (no-route: {how})")
        return lines
    else:
        route = listener.on_timeout
        if route is None:
            lines.append(f"  chosen: none, close (probe-timeout: {how}, and no on_timeout route)")
            return lines
        lines.append(f"  chosen: route {route.name} (timeout: {how}, on_timeout after "
                     f"{cfg.settings.probe_timeout:g}s)")
    return lines + _route(route, data[:used], src, dst or _listener_address(listener, src))


def _replay(cfg, listener, data: bytes, steps: list[int], closed: bool):
    """(Decision or None for a timeout, bytes used, how) as the daemon's sniff loop would reach it."""
    routes = listener.routes
    if routes[0].probe == "any":
        return sniff.Decision(0, True, (Verdict.MATCH,)), 0, "its probe is any: no peek"
    limit = cfg.settings.max_probe_bytes
    table = listener.probe_table
    decision, used = None, 0
    for step in steps:
        used = min(step, limit)
        decision = sniff.decide(data[:used], table, full=used >= limit)
        if decision.done:
            return decision, used, _how(decision, used, used >= limit)
    if closed:
        decision = sniff.decide(data[:used], table, full=True)
        return decision, used, _how(decision, used, True, "the client closed its side, so waiting counts as next")
    waiting = routes[len(decision.verdicts) - 1].name if decision else "?"
    return None, used, f"route {waiting} still says again after {used} bytes"


def _how(decision, used: int, full: bool, why: str = "") -> str:
    if decision.route is None:
        return why or "every probe said next and no route has probe any"
    text = f"match after {used} bytes"
    if full and not why:
        why = "max_probe_bytes reached, so waiting counts as next"
    return f"{text}; {why}" if why else text


def _verdicts(routes, data: bytes, decision, full: bool = False) -> list[str]:
    """Each route's verdict on these bytes, marking where the daemon's strict-order walk stopped."""
    walked = len(decision.verdicts) if decision is not None else 0
    width = max(len(r.name) for r in routes)
    lines = []
    for i, route in enumerate(routes):
        own = PROBES[route.probe].func(data, route.opts).value
        if decision is not None and i < walked:
            verdict = decision.verdicts[i].value
            mark = "  <- chosen" if decision.route == i else ""
        else:
            verdict = f"({own})"
            mark = "  not reached: an earlier route decided or is waiting"
        options = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                            for k, v in _shown_options(route).items())
        if verdict in ("next", "(next)"):
            mark = f"  ({why.why_next(route.probe, data, route.opts, full=full)}){mark}"
        lines.append((f"  {i + 1}. {route.name.ljust(width)}  probe {route.probe:<8} {verdict:<8}"
                      + (f" [{options}]" if options else "") + mark).rstrip())
    return lines


def _shown_options(route) -> dict:
    return {k: route.opts[k] for k in ("sni", "alpn", "host", "min_length") if route.opts.get(k)}


def _route(route, data: bytes, src, dst) -> list[str]:
    lines = []
    if route.access is not None and src is not None and not route.access.permits(src[0]):
        return [f"  client {src[0]} is refused by the route's allow/deny: close (denied)"]
    terminating = route.server_context is not None
    if terminating and route.inner_routes:
        lines.append(f"  terminates TLS, then sniffs the decrypted stream with "
                     f"{', '.join(r.name for r in route.inner_routes)} (not visible in a capture)")
        return lines
    if terminating:
        lines.append("  terminates TLS; the backend receives plaintext")
    lines.append(f"  backend: {route.backend.text}" + (" (TLS to the backend)" if route.backend_context else ""))
    if not route.send_proxy:
        lines.append("  PROXY header: none")
        return lines
    example = src is None
    if src is None:
        src = EXAMPLE_SRC[6 if ":" in dst[0] else 4]
    facts = proxyout.Facts(src=src, dst=dst, unique_id=EXAMPLE_UNIQUE_ID)
    if route.send_proxy == "v2":
        hello = clienthello.parse_client_hello(data)
        if hello.status is clienthello.HelloStatus.OK:
            facts.sni = hello.sni
            facts.alpn = None if terminating else (hello.alpn[0] if hello.alpn else None)
    header = proxyout.header(route.send_proxy, facts, crc=route.send_proxy_crc)
    lines.append(f"  PROXY header {route.send_proxy} ({len(header)} bytes)"
                 + (" with example client address" if example else "") + ":")
    if route.send_proxy == "v1":
        lines.append(f"    text: {header.decode('ascii').rstrip()}")
    lines += [f"    {line}" for line in hexdump(header)]
    if route.send_proxy == "v2":
        lines.append(f"    UNIQUE_ID is '{EXAMPLE_UNIQUE_ID.decode()}' here; the daemon makes one per connection")
        if terminating:
            lines.append("    the daemon adds the negotiated ALPN and an SSL TLV (version, cipher, client CN) "
                         "after the handshake")
    return lines


def _listener_address(listener, src) -> tuple[str, int]:
    """The address a client reaches: the listener's first; an unspecified one as loopback."""
    address = listener.addresses[0]
    host, port = address.sockaddr[0], address.sockaddr[1]
    try:
        ip = ipaddress.ip_address(host)
        if ip.is_unspecified:
            host = "::1" if ip.version == 6 else "127.0.0.1"
    except ValueError:
        pass
    return host, port


def _port_of(address) -> int | None:
    return address.sockaddr[1] if isinstance(address.sockaddr, tuple) else None


def _endpoint(ep) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _preview(data: bytes, n: int = 24) -> str:
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in data[:n])
    return f"{data[:n].hex(' ')}{' ...' if len(data) > n else ''}  |{text}|"


def hexdump(data: bytes) -> list[str]:
    out = []
    for pos in range(0, len(data), 16):
        chunk = data[pos:pos + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.append(f"{pos:04x}  {chunk.hex(' '):<47}  |{text}|")
    return out
