"""The supervisor's view of the workers' metrics: totals that never go backwards, and questions to workers.

Owns: the totals of exited workers (the counters of each one's last snapshot, added when it is reaped),
the sum over live workers' last snapshots, and queries: ask every live worker for a fresh snapshot and/or
its open connections, then call back once all have answered, or after `timeout` with what came.
Must not import sockets or the reactor module (it is given a loop that has call_later); sending a request
is the worker record's `ask()`.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Callable

from epollmux.observe import metrics

log = logging.getLogger("epollmux.supervisor")

COLLECT_TIMEOUT = 1.0       # seconds a question waits for the slowest worker
ROWS_PER_WORKER = 5000      # show conns rows kept per worker, whatever a worker sends


class Query:
    """One question to the live workers; `done(query)` runs once, when answered or timed out."""

    def __init__(self, qid: int, done: Callable[["Query"], None]):
        self.qid = qid
        self.done = done
        self.waiting: dict[int, set[str]] = {}     # pid -> kinds still expected ("snap", "conns")
        self.asked: list[int] = []                 # pids asked, in order
        self.rows: dict[int, list] = {}            # pid -> show conns rows
        self.open: dict[int, int] = {}             # pid -> open connections it counted
        self.timer = None

    def incomplete(self) -> list[int]:
        return [pid for pid in self.asked if pid in self.waiting]


class Collector:
    def __init__(self, loop, timeout: float = COLLECT_TIMEOUT):
        self.loop = loop
        self.timeout = timeout
        self.gone: metrics.Snapshot = {}
        self.queries: dict[int, Query] = {}
        self._ids = itertools.count(1)

    def totals(self, procs) -> metrics.Snapshot:
        """Exited workers' counters plus every live worker's last snapshot."""
        out = metrics.add({}, self.gone)
        for proc in procs:
            metrics.add(out, proc.snapshot)
        return out

    def ask(self, procs, kinds: tuple[str, ...], done: Callable[[Query], None]) -> Query:
        query = Query(next(self._ids), done)
        self.queries[query.qid] = query
        for proc in procs:
            asked = {kind for kind in kinds if proc.ask(f"{kind} {query.qid}")}
            if asked:
                query.waiting[proc.pid] = asked
                query.asked.append(proc.pid)
        if query.waiting:
            query.timer = self.loop.call_later(self.timeout, lambda: self._finish(query.qid))
        else:
            self.loop.call_later(0, lambda: self._finish(query.qid))
        return query

    def reply(self, proc, kind: str, qid: int, payload: str) -> None:
        """A worker's answer (its snapshot itself is already stored on its record)."""
        query = self.queries.get(qid)
        if query is None or proc.pid not in query.waiting:
            return
        if kind == "conns":
            try:
                rows = json.loads(payload)
            except ValueError:
                return
            kept = query.rows.setdefault(proc.pid, [])
            if isinstance(rows, list):
                kept.extend(rows[:max(0, ROWS_PER_WORKER - len(kept))])
        elif kind == "conns-end":
            query.open[proc.pid] = int(payload) if payload.isdigit() else 0
            self._got(query, proc.pid, "conns")
        elif kind == "snap":
            self._got(query, proc.pid, "snap")

    def worker_gone(self, proc) -> None:
        """A reaped worker: its counters join the totals; no query waits for it any more."""
        metrics.add(self.gone, proc.snapshot, counters_only=True)
        proc.snapshot = {}
        for query in list(self.queries.values()):
            if query.waiting.pop(proc.pid, None) is not None and not query.waiting:
                self._finish(query.qid)

    def _got(self, query: Query, pid: int, kind: str) -> None:
        kinds = query.waiting.get(pid)
        if kinds is None:
            return
        kinds.discard(kind)
        if not kinds:
            del query.waiting[pid]
            if not query.waiting:
                self._finish(query.qid)

    def _finish(self, qid: int) -> None:
        query = self.queries.pop(qid, None)
        if query is None:
            return
        if query.timer is not None:
            query.timer.cancel()
        try:
            query.done(query)
        except Exception:
            log.exception("answering a stats query failed")
