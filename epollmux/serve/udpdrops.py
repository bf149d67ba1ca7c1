"""Datagrams that start no UDP flow: counted exactly, logged as one summary line per interval.

Owns: what a worker does with a new client's datagram that is refused before any flow state exists (no
route can take it, a flow bound, the listener's access list): `Drops.drop` counts it in the stats (a close
with its reason, its bytes, `epollmux_udp_dropped_total{route="-"}`) and in the worker's tally, at a cost
of a few dict increments; the tally is written as one log line per listener per SUMMARY_INTERVAL at most
("N datagrams of no flow dropped in the last S s: reason=count ..., last from CLIENT"), so a flood of
garbage from any number of source ports costs neither a socket, a timer, nor a log line per datagram
(README "UDP: listeners, flows and workers").
Must not import the listener, the flows (flows.py calls this) nor any wire/ module.
"""

from __future__ import annotations

import logging
from collections import Counter

from epollmux import addr

log = logging.getLogger("epollmux.udp")

SUMMARY_INTERVAL = 1.0      # seconds: at most one summary line per listener and worker in each


class Drops:
    """The tally of one worker since its last summary line, and the one timer that writes it."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.counts: Counter[tuple[str, str]] = Counter()    # (listener, reason) -> datagrams
        self.last: dict[str, tuple[int, tuple]] = {}          # listener -> (family, client) of the last one
        self.since = 0.0
        self.timer = None

    def drop(self, udp, client, reason: str, size: int) -> None:
        """Count one refused first datagram of `client` on listening socket `udp` (a UdpListener)."""
        name = udp.listener.name
        self.ctx.stats.datagram_refused(name, reason, size)
        self.counts[name, reason] += 1
        self.last[name] = (udp.family, client)
        if self.timer is None:
            self.since = self.ctx.reactor.now
            self.timer = self.ctx.reactor.call_later(SUMMARY_INTERVAL, self._summary)

    def _summary(self) -> None:
        self.timer = None
        self.flush()

    def flush(self) -> None:
        """Write the tally (one line per listener) and start a new one; the worker calls it at its end."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.counts:
            return
        seconds = self.ctx.reactor.now - self.since
        by_listener: dict[str, list[tuple[str, int]]] = {}
        for (name, reason), n in sorted(self.counts.items()):
            by_listener.setdefault(name, []).append((reason, n))
        for name, counts in by_listener.items():
            family, client = self.last[name]
            log.info("%s: %d datagrams of no flow dropped in the last %.1f s: %s, last from %s", name,
                     sum(n for _, n in counts), seconds, " ".join(f"{reason}={n}" for reason, n in counts),
                     addr.peer_text(family, client))
        self.counts.clear()
        self.last.clear()
