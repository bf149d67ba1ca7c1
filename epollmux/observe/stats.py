"""Counters of one worker: connections by listener, route and close reason, bytes, times, TLS, events.

Owns: the counting (called from the connection's and acceptor's hot paths, so each call is a dict or list
increment, and a timing is one bisect), the worker's metrics snapshot (metrics.py families: counters plus
what open connections hold now: their count, their bytes so far, pipes, fds), the `show conns` rows, and
the plain-text rendering for SIGUSR1. Must not import sockets or the reactor.
"""

from __future__ import annotations

import os
import resource
from collections import Counter

from epollmux.observe.metrics import Histogram, Snapshot

CONNS_LISTED = 1000     # show conns: at most this many connections per worker, the oldest first


class Stats:
    def __init__(self):
        self.counters: Counter[tuple[str, str]] = Counter()       # (what, route) -> n
        self.closes: Counter[tuple[str, str, str]] = Counter()    # (listener, route, reason) -> n
        self.route_bytes: dict[str, list[int]] = {}               # route -> [up, down] of closed connections
        self.bytes_up = 0
        self.bytes_down = 0
        self.accepted = 0
        self.accepted_by: Counter[str] = Counter()                # listener -> n
        self.sniff: dict[str, Histogram] = {}                     # listener -> time to a route
        self.connect: dict[str, Histogram] = {}                   # route -> time to connect
        self.tls: Counter[tuple[str, str]] = Counter()            # (route, side) -> handshakes done
        self.tls_failures: Counter[tuple[str, str, str]] = Counter()   # (route, side, reason) -> n
        self.datagrams: dict[str, list[int]] = {}                 # route -> [up, down, dropped] of ended flows

    # --- hot-path counting -----------------------------------------------------------------------
    def count(self, what: str, route: str = "-") -> None:
        self.counters[what, route] += 1

    def accepted_on(self, listener: str) -> None:
        self.accepted += 1
        self.accepted_by[listener] += 1

    def routed(self, listener: str, route: str, seconds: float, inner: bool = False) -> None:
        """`route` was chosen `seconds` after accept (counted); a choice inside TLS is not a sniff time."""
        self.counters["routed", route] += 1
        if not inner:
            hist = self.sniff.get(listener)
            if hist is None:
                hist = self.sniff[listener] = Histogram()
            hist.observe(seconds)

    def connected(self, route: str, seconds: float) -> None:
        hist = self.connect.get(route)
        if hist is None:
            hist = self.connect[route] = Histogram()
        hist.observe(seconds)

    def tls_handshake(self, route: str, side: str) -> None:
        self.tls[route, side] += 1

    def closed(self, listener: str, route: str, phase: str, reason: str, up: int, down: int) -> None:
        """A connection closed in `phase` (the value of the phase it was in), having moved up/down bytes."""
        self.closes[listener, route, reason] += 1
        if phase == "handshaking":
            self.tls_failures[route, "client", reason] += 1
        elif phase == "backend-handshaking":
            self.tls_failures[route, "backend", reason] += 1
        if reason == "probe-timeout":
            self.counters["probe_timeouts", "-"] += 1
        self.bytes_up += up
        self.bytes_down += down
        moved = self.route_bytes.get(route)
        if moved is None:
            moved = self.route_bytes[route] = [0, 0]
        moved[0] += up
        moved[1] += down

    def flow_closed(self, route: str, up: int, down: int, dropped: int) -> None:
        """A UDP flow ended having relayed up/down datagrams and dropped `dropped` (bytes go through closed())."""
        counts = self.datagrams.get(route)
        if counts is None:
            counts = self.datagrams[route] = [0, 0, 0]
        counts[0] += up
        counts[1] += down
        counts[2] += dropped

    def datagram_refused(self, listener: str, reason: str, size: int) -> None:
        """A new client's datagram dropped before any flow existed: a close with `reason` on route "-",
        its bytes up, and one datagram dropped on route "-"."""
        self.closes[listener, "-", reason] += 1
        self.bytes_up += size
        moved = self.route_bytes.get("-")
        if moved is None:
            moved = self.route_bytes["-"] = [0, 0]
        moved[0] += size
        counts = self.datagrams.get("-")
        if counts is None:
            counts = self.datagrams["-"] = [0, 0, 0]
        counts[2] += 1

    def closed_outer(self, listener: str, route: str, reason: str) -> None:
        """The terminating route around a route chosen inside TLS: its routed count has a close too."""
        self.closes[listener, route, reason] += 1

    # --- snapshot ---------------------------------------------------------------------------------
    def snapshot(self, connections, pool, flows=()) -> Snapshot:
        """The metrics.py families this worker reports; open connections' bytes count as they are now."""
        events, routed, timeouts = {}, {}, {}
        for (what, route), n in self.counters.items():
            if what == "routed":
                routed[(route,)] = n
            elif what == "probe_timeouts":
                timeouts[(route,)] = n
            else:
                events[(what, route)] = n
        moved = {route: list(pair) for route, pair in self.route_bytes.items()}
        active: Counter = Counter()
        for conn in connections:
            route = conn.route.name if conn.route is not None else "-"
            active[conn.listener.name, route, conn.phase] += 1
            counts = conn.moved()
            if counts is not None:
                pair = moved.get(route)
                if pair is None:
                    pair = moved[route] = [0, 0]
                pair[0] += counts[0]
                pair[1] += counts[1]
        flows_active: Counter = Counter()
        grams = {route: list(c) for route, c in self.datagrams.items()}
        for flow in flows:
            route = flow.route.name if flow.route is not None else "-"
            flows_active[flow.listener.name, route, "relaying" if flow.route is not None else "pending"] += 1
            pair = moved.setdefault(route, [0, 0])
            pair[0] += flow.up
            pair[1] += flow.down
            if flow.route is None:      # a pending flow's datagrams are neither relayed nor dropped yet
                continue
            counts = grams.setdefault(route, [0, 0, 0])
            counts[0] += flow.dgrams_up
            counts[1] += flow.dgrams_down
            counts[2] += flow.dropped
        fds = open_fds()
        idle = pool.idle_pipes
        return {
            "epollmux_connections_accepted_total": {(k,): n for k, n in self.accepted_by.items()},
            "epollmux_connections_active": dict(active),
            "epollmux_connections_closed_total": dict(self.closes),
            "epollmux_connections_routed_total": routed,
            "epollmux_probe_timeouts_total": timeouts,
            "epollmux_events_total": events,
            "epollmux_bytes_total": {k: v for route, (up, down) in moved.items()
                                     for k, v in (((route, "up"), up), ((route, "down"), down))},
            "epollmux_sniff_seconds": {(k,): h.value() for k, h in self.sniff.items()},
            "epollmux_connect_seconds": {(k,): h.value() for k, h in self.connect.items()},
            "epollmux_tls_handshakes_total": dict(self.tls),
            "epollmux_tls_handshake_failures_total": dict(self.tls_failures),
            "epollmux_pipes": {("in_use",): pool.pipes - idle, ("idle",): idle},
            "epollmux_pipe_fallbacks_total": {(): pool.fallbacks},
            "epollmux_relay_bytes_total": {("splice",): pool.spliced, ("copy",): pool.copied},
            "epollmux_relay_switches_total": {("splice",): pool.to_splice, ("copy",): pool.to_copy},
            "epollmux_open_fds": {("workers",): fds},
            "epollmux_worker_open_fds_max": {(): fds},
            "epollmux_fd_limit": {(): resource.getrlimit(resource.RLIMIT_NOFILE)[0]},
            "epollmux_udp_flows_active": dict(flows_active),
            "epollmux_udp_datagrams_total": {k: v for route, (up, down, _) in grams.items()
                                             for k, v in (((route, "up"), up), ((route, "down"), down))},
            "epollmux_udp_dropped_total": {(route,): c[2] for route, c in grams.items()},
        }

    def render(self, active: int, pool, flows: int = 0) -> str:
        lines = [f"accepted={self.accepted} active={active} flows={flows} bytes_up={self.bytes_up} "
                 f"bytes_down={self.bytes_down} pipes={pool.pipes} channels_lent={pool.lent} "
                 f"pipe_fallbacks={pool.fallbacks} spliced={pool.spliced} copied={pool.copied} "
                 f"to_splice={pool.to_splice} to_copy={pool.to_copy}"]
        lines += [f"{what} route={route} {n}" for (what, route), n in sorted(self.counters.items())]
        reasons: Counter = Counter()
        for (_, route, reason), n in self.closes.items():
            reasons[route, reason] += n
        lines += [f"closed route={route} reason={reason} {n}" for (route, reason), n in sorted(reasons.items())]
        lines += [f"accepted listener={listener} {n}" for listener, n in sorted(self.accepted_by.items())]
        return "\n".join(lines)


def conn_rows(connections, now: float, limit: int = CONNS_LISTED) -> list[list]:
    """`show conns` rows (metrics.CONN_COLUMNS without the worker), the oldest connections first."""
    rows = []
    for conn in sorted(connections, key=lambda c: c.started)[:limit]:
        backend = conn.route.backend.text if conn.backend is not None and conn.route.backend else None
        up, down = conn.moved() or (0, 0)
        rows.append([conn.peer, conn.listener.name, conn.route_label(None), conn.phase, round(now - conn.started, 3),
                     up, down, backend])
    return rows


def open_fds() -> int:
    """fds open in this process: st_size of /proc/self/fd (Linux >= 6.2, ~3 us), else a listing (~1.5 us/fd)."""
    try:
        size = os.stat("/proc/self/fd").st_size
        return size if size > 0 else len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return 0
