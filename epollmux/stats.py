"""Counters of one worker: connections by route and close reason, bytes, events.

Owns: the counting and its plain-text rendering for SIGUSR1. Must not import sockets or the reactor.
"""

from __future__ import annotations

from collections import Counter


class Stats:
    def __init__(self):
        self.counters: Counter[tuple[str, str]] = Counter()   # (what, route) -> n
        self.reasons: Counter[tuple[str, str]] = Counter()    # (route, reason) -> n
        self.bytes_up = 0
        self.bytes_down = 0
        self.accepted = 0

    def count(self, what: str, route: str = "-") -> None:
        self.counters[what, route] += 1

    def closed(self, route: str, reason: str, up: int, down: int) -> None:
        self.reasons[route, reason] += 1
        self.bytes_up += up
        self.bytes_down += down

    def render(self, active: int, pool) -> str:
        lines = [f"accepted={self.accepted} active={active} bytes_up={self.bytes_up} "
                 f"bytes_down={self.bytes_down} pipes={pool.pipes} channels_lent={pool.lent} "
                 f"pipe_fallbacks={pool.fallbacks}"]
        lines += [f"{what} route={route} {n}" for (what, route), n in sorted(self.counters.items())]
        lines += [f"closed route={route} reason={reason} {n}" for (route, reason), n in sorted(self.reasons.items())]
        return "\n".join(lines)
