"""`--explain` of a capture's UDP flows: which route of the config's UDP listeners each flow would take.

Owns: replaying the UDP decision (README "UDP probes") datagram by datagram over each flow a pcap holds
(pcap.udp_flows: flows keyed by client address and port), with the same pure pieces the daemon uses
(udpsniff.decide_flow, the UDP probes, udpsniff.flow_names), and the report: each route's verdict, the route
chosen and why, the SNI/ALPN seen, the backend.  A flow is explained against the listeners with `udp:`
addresses; a config without any is explained against the listeners whose routes all use UDP probes.
Must not open sockets or start anything.  Must not import what tools/ must not (README "Architecture").
"""

from __future__ import annotations

from epollmux.tools import pcap
from epollmux.wire import dtls, quic, udpsniff
from epollmux.wire.clienthello import HelloStatus
from epollmux.wire.probes import Verdict, glob_any
from epollmux.wire.udpprobes import UDP_PROBES


def udp_listeners(cfg) -> tuple[list, str]:
    """(the listeners a UDP flow is explained against, a note when they were guessed)."""
    marked = [lst for lst in cfg.listeners if getattr(lst, "udp", False)]
    if marked:
        return marked, ""
    guessed = [lst for lst in cfg.listeners if all(r.probe in UDP_PROBES for r in lst.routes)]
    note = "no listener has udp: addresses; using those whose routes all have UDP probes" if guessed else \
        "no listener has udp: addresses or only UDP probes: nothing to route these flows"
    return guessed, note


def explain_flows(cfg, path: str, flows: list[pcap.UdpFlow]) -> str:
    listeners, note = udp_listeners(cfg)
    lines = [f"capture {path}: pcap ({flows[0].link}), {len(flows)} UDP flow{'s' if len(flows) > 1 else ''}"]
    if note:
        lines.append(f"  note: {note}")
    for flow in flows:
        lines.append("")
        lines += _flow(flow, listeners)
    return "\n".join(lines) + "\n\n"


def _flow(flow: pcap.UdpFlow, listeners: list) -> list[str]:
    sizes = ", ".join(str(len(d)) for d in flow.datagrams)
    lines = [f"flow {_endpoint(flow.client)} -> {_endpoint(flow.server)}: {len(flow.datagrams)} client "
             f"datagram{'s' if len(flow.datagrams) > 1 else ''} ({sizes} bytes)"
             + (f", {flow.replies} from the server" if flow.replies else "")]
    first = flow.datagrams[0] if flow.datagrams else b""
    lines.append(f"  first datagram: {first[:24].hex(' ')}{' ...' if len(first) > 24 else ''}")
    names = udpsniff.flow_names(tuple(flow.datagrams)).fields()
    seen = ", ".join(f"{k} {v}" for k, v in names.items() if v)
    lines.append(f"  seen: {seen or 'no SNI or ALPN'}")
    for listener in listeners:
        lines += _listener(listener, flow)
    return lines


def _listener(listener, flow: pcap.UdpFlow) -> list[str]:
    addresses = ", ".join(a.text for a in listener.addresses)
    hit = any(isinstance(a.sockaddr, tuple) and a.sockaddr[1] == flow.server[1] for a in listener.addresses)
    lines = [f"  listener {listener.name} ({addresses})" + ("  <- the flow's destination port" if hit else "")]
    routes = listener.routes
    table = tuple((r.probe, r.opts) for r in routes)
    decision, used, how = _replay(table, tuple(flow.datagrams))
    width = max(len(r.name) for r in routes)
    walked = len(decision.verdicts)
    for i, route in enumerate(routes):
        if i < walked:
            verdict = decision.verdicts[i].value
            mark = "  <- chosen" if decision.route == i else ""
        else:
            verdict = f"({UDP_PROBES[route.probe].func(tuple(flow.datagrams[:used]), route.opts).value})"
            mark = "  not reached: an earlier route decided"
        options = ", ".join(f"{k}={','.join(v)}" for k in ("sni", "alpn") if (v := route.opts.get(k)))
        if verdict in ("next", "(next)"):
            mark = f"  ({why_next(route.probe, tuple(flow.datagrams[:used or None]), route.opts)}){mark}"
        lines.append((f"    {i + 1}. {route.name.ljust(width)}  probe {route.probe:<9} {verdict:<8}"
                      + (f" [{options}]" if options else "") + mark).rstrip())
    if decision.route is None:
        lines.append(f"    chosen: none, drop the flow (no-route: {how})")
        return lines
    route = routes[decision.route]
    backend = getattr(route.backend, "text", route.backend)
    return lines + [f"    chosen: route {route.name} ({how})", f"    backend: {backend}"]


def why_next(probe: str, datagrams: tuple[bytes, ...], opts) -> str:
    """A short reason for a UDP probe's NEXT (the hello's fault, or the name that did not fit)."""
    named = "sni" in opts or "alpn" in opts
    if probe == "dtls" or (probe == "quic" and named):
        hello = (quic if probe == "quic" else dtls).client_hello(datagrams)
        if hello.status is HelloStatus.NEED_MORE:
            return "the ClientHello is not whole"
        if hello.status is not HelloStatus.OK:
            return hello.reason or hello.status.value
        if "sni" in opts and hello.sni is None:
            return "no SNI"
        if "sni" in opts and not glob_any(hello.sni, opts["sni"]):
            return f"sni '{hello.sni}' not in [{', '.join(opts['sni'])}]"
        if not hello.alpn:
            return "no ALPN offered"
        return f"alpn {','.join(hello.alpn)} not in [{', '.join(opts['alpn'])}]"
    return f"not {probe}"


def _replay(table, datagrams: tuple[bytes, ...]):
    """(Decision, datagrams used, how) as the daemon's flow table reaches it: a decision on each datagram as
    it arrives; the flow's last datagram in the capture counts as the last one (AGAIN becomes NEXT)."""
    if not table:
        return udpsniff.Decision(None, True, ()), 0, "the listener has no routes"
    if table[0][0] == "any":
        return udpsniff.Decision(0, True, (Verdict.MATCH,)), 0, "its probe is any: no datagram needed"
    decision = udpsniff.decide_flow((), table)
    for n in range(1, len(datagrams) + 1):
        last = n == len(datagrams)
        decision = udpsniff.decide_flow(datagrams[:n], table, full=last)
        if decision.done:
            if decision.route is None:
                return decision, n, (f"every probe said next after {n} datagram{'s' if n > 1 else ''}"
                                     + ("; the capture has no more, so waiting counts as next" if last else ""))
            return decision, n, f"match on datagram {n}"
    return decision, 0, "no datagram from the client"


def _endpoint(ep) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
