"""The metric families, their snapshots and how they are summed and shown.

Owns: the one table of metric families (name, type, help, labels, buckets, how workers' values
combine), `Histogram` (fixed buckets: one bisect on a small tuple per observation), snapshots
(`{family: {label values: value}}`, a histogram's value being its bucket counts then its sum), their
JSON form for the report channel, `add()` (how the supervisor sums workers), and the two renderings:
the Prometheus text exposition format (version 0.0.4) and the plain text of `show stat`/`show conns`.
Pure: must not import sockets, the reactor, the worker or the supervisor.

A counter or histogram family only grows within one worker; the supervisor keeps each live worker's
last snapshot plus the sum of the last snapshots of exited workers, so the sums never go backwards.
Gauges describe live workers only.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from dataclasses import dataclass

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Family:
    name: str
    kind: str                       # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    merge: str = "sum"              # sum | max (a gauge that is a worst case, not a total)


FAMILIES = {f.name: f for f in (
    # --- from the workers' snapshots
    Family("epollmux_connections_accepted_total", "counter", "Connections accepted, per listener.", ("listener",)),
    Family("epollmux_connections_active", "gauge",
           "Open connections, per listener, route ('-' until one is chosen) and phase.", ("listener", "route", "phase")),
    Family("epollmux_connections_closed_total", "counter",
           "Connections closed, per listener, route ('-' if none was chosen) and close reason "
           "(a route chosen inside TLS counts its outer route too).",
           ("listener", "route", "reason")),
    Family("epollmux_connections_routed_total", "counter",
           "Routes chosen (a route chosen inside TLS counts its outer route too).", ("route",)),
    Family("epollmux_probe_timeouts_total", "counter",
           "Clients silent for probe_timeout, per on_timeout route ('-': closed, no such route).", ("route",)),
    Family("epollmux_events_total", "counter",
           "Other worker events (refused_limit, refused_exhausted, accept_exhausted, sniff_wakeups, ...).", ("event", "route")),
    Family("epollmux_bytes_total", "counter",
           "Bytes relayed, per route; direction up = client to backend. Open connections included.",
           ("route", "direction")),
    Family("epollmux_sniff_seconds", "histogram", "Time from accept to the route chosen, per listener.",
           ("listener",), SECONDS_BUCKETS),
    Family("epollmux_connect_seconds", "histogram", "Time to connect the backend (successful connects), per route.",
           ("route",), SECONDS_BUCKETS),
    Family("epollmux_tls_handshakes_total", "counter",
           "TLS handshakes completed, per route; side client = terminated, backend = re-encrypted.",
           ("route", "side")),
    Family("epollmux_tls_handshake_failures_total", "counter",
           "Connections that ended during a TLS handshake, per route, side and close reason.",
           ("route", "side", "reason")),
    Family("epollmux_pipes", "gauge", "Relay pipes alive in the workers' pools: lent to a direction or idle.",
           ("state",)),
    Family("epollmux_pipe_fallbacks_total", "counter", "Times a copy buffer stood in for a pipe (pool cap, EMFILE)."),
    Family("epollmux_relay_bytes_total", "counter",
           "Bytes the workers relayed (closed and open connections, not the kernel relay), per channel: splice or copy.",
           ("channel",)),
    Family("epollmux_relay_switches_total", "counter",
           "Times an adaptive relay direction switched to splice (a large stream) or back to copy (small exchanges).",
           ("to",)),
    Family("epollmux_open_fds", "gauge", "File descriptors open, in all workers or in the supervisor.", ("process",)),
    Family("epollmux_worker_open_fds_max", "gauge", "File descriptors open in the worker that has the most.",
           merge="max"),
    Family("epollmux_fd_limit", "gauge", "Open files limit (RLIMIT_NOFILE, soft) of a worker.", merge="max"),
    Family("epollmux_udp_flows_active", "gauge",
           "UDP flows held, per listener, route ('-' while pending) and state (pending, relaying).",
           ("listener", "route", "state")),
    Family("epollmux_udp_datagrams_total", "counter",
           "UDP datagrams relayed, per route; direction up = client to backend. Open flows included.",
           ("route", "direction")),
    Family("epollmux_udp_dropped_total", "counter",
           "UDP datagrams dropped, per route: a full socket buffer (as a router drops them); route '-': "
           "datagrams that reached no route (no route matched, a flow bound, an access list, probe timeout).",
           ("route",)),
    # --- from the supervisor
    Family("epollmux_workers", "gauge", "Worker processes, per state.", ("state",)),
    Family("epollmux_draining_connections", "gauge",
           "Open connections of draining workers (retired by a reload, or stopping)."),
    Family("epollmux_worker_crashes_total", "counter", "Workers that exited unexpectedly."),
    Family("epollmux_reloads_total", "counter", "Reloads (SIGHUP), per result: ok, refused, abandoned.", ("result",)),
    Family("epollmux_start_time_seconds", "gauge", "Start time of the supervisor, seconds since the epoch."),
    Family("epollmux_info", "gauge", "Version of epollmux (always 1).", ("version",)),
    # --- the standard process metrics, for the supervisor and its workers together (procstats.py)
    Family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds "
           "(supervisor and workers)."),
    Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes (supervisor and workers)."),
    Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes (supervisor and workers)."),
    Family("process_open_fds", "gauge", "Number of open file descriptors (supervisor and workers)."),
    Family("process_max_fds", "gauge", "Maximum number of open file descriptors (of the supervisor)."),
    Family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds "
           "(the supervisor)."),
)}

Snapshot = dict          # {family name: {tuple of label values: number | [bucket counts..., sum]}}


class Histogram:
    """Counts per bucket (the last one is +Inf) and the sum; not cumulative until rendered."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = SECONDS_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1      # le: the first bound >= value
        self.sum += value

    def value(self) -> list:
        return [*self.counts, self.sum]


# --- snapshots --------------------------------------------------------------------------------------
def encode(snapshot: Snapshot) -> str:
    """Compact JSON: {family: [[label values..., value], ...]}; no newline inside."""
    return json.dumps({name: [[*labels, value] for labels, value in series.items()]
                       for name, series in snapshot.items()}, separators=(",", ":"))


def decode(text: str) -> Snapshot:
    """The inverse of encode(); unknown families and malformed series are dropped; ValueError on bad JSON."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("snapshot is not an object")
    out: Snapshot = {}
    for name, rows in raw.items():
        family = FAMILIES.get(name)
        if family is None or not isinstance(rows, list):
            continue
        series = out.setdefault(name, {})
        width = len(family.labels)
        for row in rows:
            if isinstance(row, list) and len(row) == width + 1 and _valid(family, row[-1]):
                series[tuple(str(v) for v in row[:width])] = row[-1]
    return out


def _valid(family: Family, value) -> bool:
    if family.kind == "histogram":
        return (isinstance(value, list) and len(value) == len(family.buckets) + 2
                and all(isinstance(v, (int, float)) for v in value))
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def add(total: Snapshot, snapshot: Snapshot, *, counters_only: bool = False) -> Snapshot:
    """Add snapshot into total (in place) and return total; gauges merge by their rule or are skipped."""
    for name, series in snapshot.items():
        family = FAMILIES[name]
        if counters_only and family.kind == "gauge":
            continue
        into = total.setdefault(name, {})
        for labels, value in series.items():
            old = into.get(labels)
            if old is None:
                into[labels] = list(value) if isinstance(value, list) else value
            elif isinstance(value, list):
                into[labels] = [a + b for a, b in zip(old, value)]
            elif family.merge == "max":
                into[labels] = max(old, value)
            else:
                into[labels] = old + value
    return total


def total(snapshot: Snapshot, name: str, **match) -> float:
    """Sum of a counter or gauge family's series whose labels match (histograms: their count)."""
    family = FAMILIES[name]
    out = 0
    for labels, value in snapshot.get(name, {}).items():
        if all(labels[family.labels.index(k)] == v for k, v in match.items()):
            out += sum(value[:-1]) if isinstance(value, list) else value
    return out


# --- Prometheus text format ------------------------------------------------------------------------
def prometheus(snapshot: Snapshot) -> str:
    """The text exposition format (0.0.4), families in table order, series sorted by labels."""
    out = []
    for family in FAMILIES.values():
        out.append(f"# HELP {family.name} {family.help}")
        out.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in sorted(snapshot.get(family.name, {}).items()):
            pairs = list(zip(family.labels, labels))
            if family.kind == "histogram":
                out.extend(_histogram_lines(family, pairs, value))
            else:
                out.append(f"{family.name}{_labels(pairs)} {_number(value)}")
    return "\n".join(out) + "\n"


def _histogram_lines(family: Family, pairs: list, value: list) -> list[str]:
    lines, running = [], 0
    for bound, count in zip((*family.buckets, math.inf), value[:-1]):
        running += count
        le = "+Inf" if bound == math.inf else _number(bound)
        lines.append(f"{family.name}_bucket{_labels(pairs + [('le', le)])} {running}")
    lines.append(f"{family.name}_sum{_labels(pairs)} {_number(value[-1])}")
    lines.append(f"{family.name}_count{_labels(pairs)} {running}")
    return lines


def _labels(pairs) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


# --- show stat / show conns -------------------------------------------------------------------------
def quantile(value: list, buckets: tuple[float, ...], q: float) -> str:
    """The bucket bound under which a fraction q of the observations fall, as text ('-' if none)."""
    counts = value[:-1]
    n = sum(counts)
    if not n:
        return "-"
    running = 0
    for bound, count in zip((*buckets, math.inf), counts):
        running += count
        if running >= q * n:
            return f"<={_seconds(bound)}" if bound != math.inf else f">{_seconds(buckets[-1])}"
    return "-"


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _by(snapshot: Snapshot, name: str, key: int) -> dict:
    """Sum a family's series by one label."""
    out: dict = {}
    for labels, value in snapshot.get(name, {}).items():
        out[labels[key]] = out.get(labels[key], 0) + (sum(value[:-1]) if isinstance(value, list) else value)
    return out


def stat_text(snapshot: Snapshot, head: list[str]) -> str:
    """`show stat`: the supervisor's head lines, then listeners, routes, close reasons, resources."""
    lines = list(head)
    accepted = _by(snapshot, "epollmux_connections_accepted_total", 0)
    active_l = _by(snapshot, "epollmux_connections_active", 0)
    sniff = snapshot.get("epollmux_sniff_seconds", {})
    for listener in sorted(set(accepted) | set(active_l) | {k[0] for k in sniff}):
        value = sniff.get((listener,))
        times = (f", sniff p50 {quantile(value, SECONDS_BUCKETS, .5)} p99 {quantile(value, SECONDS_BUCKETS, .99)}"
                 if value else "")
        lines.append(f"listener {listener}: accepted {accepted.get(listener, 0)}, "
                     f"active {active_l.get(listener, 0)}{times}")
    routed = _by(snapshot, "epollmux_connections_routed_total", 0)
    active_r = _by(snapshot, "epollmux_connections_active", 1)
    closed_r = _by(snapshot, "epollmux_connections_closed_total", 1)
    timeouts = _by(snapshot, "epollmux_probe_timeouts_total", 0)
    tls_ok = _by(snapshot, "epollmux_tls_handshakes_total", 0)
    tls_bad = _by(snapshot, "epollmux_tls_handshake_failures_total", 0)
    moved = snapshot.get("epollmux_bytes_total", {})
    connect = snapshot.get("epollmux_connect_seconds", {})
    routes = sorted((set(routed) | set(active_r) | set(closed_r) | set(timeouts)) - {"-"})
    for route in routes:
        parts = [f"routed {routed.get(route, 0)}", f"active {active_r.get(route, 0)}",
                 f"closed {closed_r.get(route, 0)}",
                 f"up {moved.get((route, 'up'), 0)} B", f"down {moved.get((route, 'down'), 0)} B"]
        if timeouts.get(route):
            parts.append(f"by timeout {timeouts[route]}")
        if (route,) in connect:
            value = connect[(route,)]
            parts.append(f"connect p50 {quantile(value, SECONDS_BUCKETS, .5)} "
                         f"p99 {quantile(value, SECONDS_BUCKETS, .99)}")
        if tls_ok.get(route) or tls_bad.get(route):
            parts.append(f"tls {tls_ok.get(route, 0)} ok {tls_bad.get(route, 0)} failed")
        lines.append(f"route {route}: " + ", ".join(parts))
    if active_r.get("-") or timeouts.get("-"):
        lines.append(f"no route yet: active {active_r.get('-', 0)}, closed after probe timeout {timeouts.get('-', 0)}")
    closed = snapshot.get("epollmux_connections_closed_total", {})
    if closed:
        lines.append("closed (listener route reason count):")
        lines.extend(f"  {listener} {route} {reason} {n}" for (listener, route, reason), n in sorted(closed.items()))
    failures = snapshot.get("epollmux_tls_handshake_failures_total", {})
    if failures:
        lines.append("tls handshake failures (route side reason count):")
        lines.extend(f"  {route} {side} {reason} {n}" for (route, side, reason), n in sorted(failures.items()))
    events = snapshot.get("epollmux_events_total", {})
    if events:
        lines.append("events: " + ", ".join(f"{event} {route} {n}" for (event, route), n in sorted(events.items())))
    pipes = snapshot.get("epollmux_pipes", {})
    fds = snapshot.get("epollmux_open_fds", {})
    lines.append(f"pipes: {pipes.get(('in_use',), 0)} in use, {pipes.get(('idle',), 0)} idle, "
                 f"{total(snapshot, 'epollmux_pipe_fallbacks_total')} fallbacks to copy")
    relayed = snapshot.get("epollmux_relay_bytes_total", {})
    switches = snapshot.get("epollmux_relay_switches_total", {})
    lines.append(f"relay: {relayed.get(('splice',), 0)} bytes spliced, {relayed.get(('copy',), 0)} copied; "
                 f"adaptive switches {switches.get(('splice',), 0)} to splice, {switches.get(('copy',), 0)} to copy")
    lines.append(f"fds: workers {fds.get(('workers',), 0)} (at most "
                 f"{total(snapshot, 'epollmux_worker_open_fds_max')} in one, limit "
                 f"{total(snapshot, 'epollmux_fd_limit')}), supervisor {fds.get(('supervisor',), 0)}")
    return "\n".join(lines) + "\n"


CONN_COLUMNS = ("worker", "client", "listener", "route", "phase", "age", "up", "down", "backend")


def conns_text(rows: list[list], notes: list[str]) -> str:
    """`show conns`: one aligned line per connection (rows as CONN_COLUMNS), then notes."""
    table = [list(CONN_COLUMNS)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(CONN_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    return "\n".join(lines + notes) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}s"
    return str(value)
