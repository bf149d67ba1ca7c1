"""What the supervisor says about itself: the status line, the SIGUSR1 lines, `show stat`'s head and
`show conns`' notes, the supervisor's own metric families, and the connections-per-second rate.

Owns: turning the supervisor's plain figures (workers as `WorkerView` rows, reload counts, crash
count, start time) into text and metric families. The renderings themselves are `metrics.py`'s.
Pure: must not import sockets, the reactor, the worker processes or the supervisor.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from dataclasses import dataclass

from epollmux import __version__
from epollmux.observe import collector, metrics, procstats, stats
from epollmux.observe.words import plural

RELOAD_OUTCOMES = ("ok", "refused", "abandoned")
WORKER_STATES = ("ready", "starting", "draining")


def proc_state(proc) -> str:
    """ready | starting | draining, of anything with `stopping` and `ready`."""
    return "draining" if proc.stopping else "ready" if proc.ready else "starting"


@dataclass(frozen=True)
class WorkerView:
    """One worker as the reports show it."""
    pid: int
    generation: int
    state: str
    accepted: int
    open: int
    fds: object = "?"


class Rate:
    """Connections per second over the last `seconds`, from a running total sampled each tick."""

    def __init__(self, seconds: float, interval: float):
        self.samples: deque = deque(maxlen=int(seconds / interval) + 1)
        self.value = 0.0

    def sample(self, now: float, total: int) -> float:
        self.samples.append((now, total))
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        self.value = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return self.value


def status_text(workers: int, connections: int, rate: float, draining: int, draining_open: int,
                flows: int = 0) -> str:
    """The line systemd shows (STATUS=) and the supervisor logs (UDP flows only when there are some)."""
    text = f"{plural(workers, 'worker')}, {plural(connections, 'open connection')}, {rate:.1f} connections/s"
    if flows:
        text += f", {plural(flows, 'UDP flow')}"
    if draining:
        text += f", {draining} draining ({plural(draining_open, 'connection')})"
    return text


def stats_lines(state: str, status: str, workers: list[WorkerView]) -> str:
    """SIGUSR1: one line for the supervisor, one per worker."""
    lines = [f"supervisor: {state}, {status}"]
    lines += [f"worker {w.pid} generation={w.generation} {w.state} accepted={w.accepted} open={w.open}"
              for w in workers]
    return "\n".join(lines)


def supervisor_families(snapshot: metrics.Snapshot, workers: list[WorkerView], crashes: int,
                        reloads: Counter, started_at: float, cfgs: list, pids: list[int]) -> metrics.Snapshot:
    """The workers' sums plus the supervisor's own families, and a 0 series for every configured
    route and listener (rate() needs them before any traffic)."""
    states = Counter(w.state for w in workers)
    snapshot = metrics.add(snapshot, {
        "epollmux_workers": {(s,): states[s] for s in WORKER_STATES},
        "epollmux_draining_connections": {(): sum(w.open for w in workers if w.state == "draining")},
        "epollmux_worker_crashes_total": {(): crashes},
        "epollmux_reloads_total": {(r,): reloads[r] for r in RELOAD_OUTCOMES},
        "epollmux_start_time_seconds": {(): round(started_at, 3)},
        "epollmux_info": {(__version__,): 1},
        "epollmux_open_fds": {("supervisor",): stats.open_fds()},
        **procstats.families(os.getpid(), pids),
    })
    routes = {name for cfg in cfgs for name in cfg.routes}
    listeners = {lst.name for cfg in cfgs for lst in cfg.listeners}
    return metrics.add(snapshot, {
        "epollmux_connections_accepted_total": {(name,): 0 for name in listeners},
        "epollmux_connections_routed_total": {(name,): 0 for name in routes},
        "epollmux_bytes_total": {(name, way): 0 for name in routes for way in ("up", "down")},
    })


def stat_text(snapshot: metrics.Snapshot, state: str, generation: int, reloads: Counter, crashes: int,
              started_at: float, status: str, workers: list[WorkerView]) -> str:
    """`show stat`: a head about the supervisor and each worker, then the counters."""
    up = time.time() - started_at
    head = [f"epollmux {__version__}: supervisor {os.getpid()}, {state}, up {up:.0f}s, "
            f"generation {generation}, reloads {reloads['ok']} ok "
            f"{reloads['refused']} refused {reloads['abandoned']} abandoned, "
            f"{crashes} worker crashes",
            f"status: {status}"]
    head += [f"worker {w.pid}: generation {w.generation}, {w.state}, "
             f"accepted {w.accepted}, open {w.open}, fds {w.fds}" for w in workers]
    return metrics.stat_text(snapshot, head)


def conns_text(query: collector.Query, timeout: float) -> str:
    """`show conns`: every worker's rows, with a note for each worker that listed less than it holds."""
    rows = [[pid, *row] for pid in query.asked for row in query.rows.get(pid, [])]
    notes = [f"{plural(len(rows), 'connection')} listed"]
    for pid in query.asked:
        unlisted = query.open.get(pid, 0) - len(query.rows.get(pid, []))
        if unlisted > 0:
            notes.append(f"worker {pid}: {unlisted} more not listed")
    notes += [f"worker {pid}: no complete answer within {timeout:g}s" for pid in query.incomplete()]
    return metrics.conns_text(rows, notes)
