"""Probe decision cost: `python3 -m bench.tools.sniffcost [--repeat N] [--seconds S]` prints JSON.

Owns: timing epollmux's pure sniffing functions on real first flights (tests/fixtures/probes/*.bin)
over the example config's route table (ssh, tls with `sni`, http, any), in a fresh interpreter so
the driver's own state does not weigh on it. Each case is timed with `timeit` (GC off while timing,
as `timeit` does; the worker freezes its startup objects, so little is left for the GC), `repeat`
times, each for about `seconds`; the result is microseconds per call.
Cases: `sniff.decide()` on the whole first flight (what a connection pays once its bytes are in),
`decide()` on the first half of a ClientHello (a hello split over two segments pays this AGAIN
first), `clienthello.parse_client_hello()` alone, and `sniff.names()` (the access record's
names, once routed). Every connection brings new bytes, so the parser's memo (keyed by the bytes) is
emptied before each timed `decide`/`parse` call: those cases pay a first parse, as a connection does. The
`names` case keeps the memo, since a routed connection finds its hello there.
UDP cases (`udp` in the JSON): `udpsniff.decide_flow()` on recorded first datagrams (tests/fixtures/udp/)
over a UDP table (wireguard, openvpn, quic with `sni`, any), and the same QUIC Initial over a table whose
`quic` route has no names (header shape only).  A new flow has a new DCID, so the QUIC key and result memos
are emptied before each call.  The UDP cases are timed interleaved (one run of each case per round,
`repeat` rounds) and `quic_decrypt_over_header` is the ratio of their medians, so a busy machine weighs on
both alike.
Imports epollmux's pure modules only (probes, sniff, clienthello, udpprobes, udpsniff, quic); runs nothing else.
"""

from __future__ import annotations

import os as _os
import sys as _sys

if not __package__:
    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

import argparse
import json
import os
import sys
import timeit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "probes")
SNI = "www.example.org"          # the name in the curl fixtures
# The example config's routes, in its order, with the tls route narrowed by SNI.
TABLE = (("ssh", {}), ("tls", {"sni": [SNI]}), ("http", {}), ("any", {}))

# (case id, what it shows, fixture, function: decide | decide-half | parse)
CASES = [
    ("tls-sni", "TLS 1.3 ClientHello (curl, SNI + ALPN http/1.1, 517 B) → tls route (2nd)",
     "tls_curl_sni.bin", "decide"),
    ("tls-h2", "TLS 1.3 ClientHello (curl, ALPN h2) → tls route", "tls_curl_h2.bin", "decide"),
    ("tls-other-sni", "TLS 1.3 ClientHello, SNI not in the table (Python ssl) → any (4th)",
     "tls_python_sni.bin", "decide"),
    ("tls-2-records", "1 KB ClientHello in two records (openssl) → any (its SNI is not in the table)",
     "tls_openssl13_fragmented.bin", "decide"),
    ("tls-half", "first half of the curl ClientHello → AGAIN (wait for more)", "tls_curl_sni.bin", "decide-half"),
    ("ssh", "SSH banner (OpenSSH) → ssh route (1st)", "ssh_openssh.bin", "decide"),
    ("http", "HTTP/1.1 GET head (curl) → http route (3rd)", "http_curl_get.bin", "decide"),
    ("parse-sni", "`parse_client_hello()` alone: curl ClientHello", "tls_curl_sni.bin", "parse"),
    ("parse-2-records", "`parse_client_hello()` alone: 1 KB hello in two records", "tls_openssl13_fragmented.bin",
     "parse"),
    ("names", "`sniff.names()`: the access record's names, once routed (the parse memo hit)",
     "tls_curl_sni.bin", "names"),
]


def _callable(kind: str, data: bytes, table):
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from epollmux.wire import clienthello, sniff
    forget = clienthello._memo.clear                         # a new connection's bytes are not memoized
    if kind == "names":
        clienthello.parse_client_hello(data)
        return (lambda: sniff.names(data).fields()), ",".join(f"{k}={v}" for k, v in sniff.names(data).fields().items())
    if kind == "parse":
        parse = clienthello.parse_client_hello
        return (lambda: (forget(), parse(data))), parse(data).status.value
    if kind == "decide-half":
        data = data[:len(data) // 2]
    decision = sniff.decide(data, table)
    outcome = "again" if not decision.done else (table[decision.route][0] if decision.route is not None else "close")
    return (lambda: (forget(), sniff.decide(data, table))), outcome


UDP_FIXTURES = os.path.join(REPO, "tests", "fixtures", "udp")
UDP_TABLE = (("wireguard", {}), ("openvpn", {}), ("quic", {"sni": [SNI]}), ("any", {}))
UDP_HEADER_TABLE = (("wireguard", {}), ("openvpn", {}), ("quic", {}), ("any", {}))
# (case id, what it shows, fixture, table)
UDP_CASES = [
    ("quic-sni", "QUIC v1 Initial (aioquic, 1200 B) decrypted, SNI matched → quic route (3rd)",
     "quic_aioquic_v1.bin", UDP_TABLE),
    ("quic-header", "the same Initial, quic route without names: header shape only", "quic_aioquic_v1.bin",
     UDP_HEADER_TABLE),
    ("quic-split", "ClientHello over two Initial datagrams, both decrypted → quic route", "quic_aioquic_v1_split.bin",
     UDP_TABLE),
    ("quic-v2", "QUIC v2 Initial decrypted → quic route", "quic_aioquic_v2.bin", UDP_TABLE),
    ("openvpn-udp", "OpenVPN UDP hard reset with tls-auth → openvpn route (2nd)", "openvpn_udp_tls_auth.bin",
     UDP_TABLE),
    ("wireguard", "WireGuard handshake initiation → wireguard route (1st)", "wireguard_initiation.bin", UDP_TABLE),
]


def _udp_callable(datagrams, routes):
    from epollmux.wire import quic, udpsniff

    def fresh():
        quic._openers.clear()
        quic._results.clear()
        return udpsniff.decide_flow(datagrams, routes, full=True)
    decision = fresh()
    outcome = routes[decision.route][0] if decision.route is not None else "close"
    return fresh, outcome


def measure_udp(repeat: int, seconds: float) -> dict:
    from epollmux.wire.udpprobes import prepare_udp_options
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from support.udp_fixtures import unpack
    timers = []
    for case_id, what, fixture, routes in UDP_CASES:
        with open(os.path.join(UDP_FIXTURES, fixture), "rb") as f:
            datagrams = unpack(f.read())
        prepared = tuple((p, prepare_udp_options(p, o)) for p, o in routes)
        fn, outcome = _udp_callable(datagrams, prepared)
        timer = timeit.Timer(fn)
        number, _ = timer.autorange()
        number = max(1, int(number * seconds / 0.2))
        timers.append((case_id, what, fixture, datagrams, outcome, timer, number))
    runs: dict[str, list[float]] = {t[0]: [] for t in timers}
    for _ in range(repeat):                         # interleaved: one run of every case per round
        for case_id, *_, timer, number in timers:
            runs[case_id].append(timer.timeit(number) / number * 1e6)
    cases = [{"case": c, "what": w, "fixture": f, "datagrams": [len(d) for d in dg], "outcome": o,
              "calls_per_run": n, "us": runs[c]} for c, w, f, dg, o, _, n in timers]
    median = {c: sorted(r)[len(r) // 2] for c, r in runs.items()}
    return {"table": [[p, o] for p, o in UDP_TABLE], "cases": cases,
            "quic_decrypt_over_header": round(median["quic-sni"] / median["quic-header"], 1)}


def table():
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from epollmux.wire import probes
    return tuple((probe, probes.prepare_options(probe, opts)) for probe, opts in TABLE)


def measure(repeat: int, seconds: float) -> dict:
    routes = table()
    cases = []
    for case_id, what, fixture, kind in CASES:
        with open(os.path.join(FIXTURES, fixture), "rb") as f:
            data = f.read()
        fn, outcome = _callable(kind, data, routes)
        timer = timeit.Timer(fn)
        number, _ = timer.autorange()           # calls taking >= 0.2 s
        number = max(1, int(number * seconds / 0.2))
        runs = [t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number)]
        cases.append({"case": case_id, "what": what, "fixture": fixture, "bytes": len(data), "function": kind,
                      "outcome": outcome, "calls_per_run": number, "us": runs})
    return {"table": [[p, {k: v for k, v in o.items()}] for p, o in TABLE], "python": sys.version.split()[0],
            "cases": cases, "udp": measure_udp(repeat, seconds)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.tools.sniffcost")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.3, help="about this long per timed run")
    o = p.parse_args(argv)
    json.dump(measure(o.repeat, o.seconds), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
