"""Per-source admission bookkeeping for one worker: connection counts, sniffing counts, connection rate.

Owns: the per-source limits (`max_connections_per_source`, `max_sniffing_per_source`, `rate_per_source`),
their counters and token buckets, and the bound on the memory they use.  Global, listener and route
`max_connections` are plain counters kept by their owners, not here.
Pure: the clock is passed in (`now`, seconds, monotonic); must not import socket, select, time, or anything
of the reactor, connection, listener or config modules.

Protocol for one connection (the source is the client's address, after a PROXY header if one is taken):
    reason = limits.admit(ip, now)            # None, Reason.LIMIT_SOURCE or Reason.LIMIT_RATE; on None, later:
    reason = limits.sniff_started(ip)         # None or Reason.LIMIT_SNIFFING; on None, when sniffing ends:
    limits.sniff_ended(ip)
    limits.release(ip)                        # once, when the admitted connection closes
A refused call changes no count, and a refused connection consumes no token.  release()/sniff_ended()
without a matching successful call raise ValueError (a bookkeeping bug, never a client's doing).

Rules:
- 0 turns a limit off.  Counts are kept either way (they cost one dict entry per live source).
- `rate_per_source` is a token bucket per source: it holds at most `burst` tokens (default: the rate,
  at least 1), refills at `rate` tokens per second, and each admitted connection takes one.  A burst of
  N simultaneous connections from a fresh source admits exactly min(N, burst).
- A source is known by its address with IPv4-mapped IPv6 taken as IPv4 (acl.source_ip); IPv6 sources
  may be grouped by prefix (`ipv6_prefix`, default 128 = each address alone), since one host commonly
  holds a whole /64.
- Memory: a source with live connections or sniffs is always kept (bounded by the worker's fds).  A source
  with none is kept only while its bucket is not yet full again (so a reconnect cannot reset its rate),
  in an LRU of at most `max_idle_sources`; entries whose bucket has refilled are dropped as admit() passes
  by, and prune(now) drops them all.  A scan from more addresses than the LRU holds evicts the oldest idle
  sources, which then start again with a full bucket: the only state ever lost.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from epollmux.acl import source_ip
from epollmux.reasons import Reason

MAX_IDLE_SOURCES = 16384
_TIDY_PER_ADMIT = 2


class _Source:
    __slots__ = ("conns", "sniffing", "tokens", "stamp")

    def __init__(self, tokens: float) -> None:
        self.conns = 0
        self.sniffing = 0
        self.tokens = tokens
        self.stamp = float("-inf")        # bucket full until first used


class Limits:
    def __init__(self, max_per_source: int = 0, max_sniffing_per_source: int = 0, rate_per_source: float = 0.0,
                 *, burst: float | None = None, ipv6_prefix: int = 128,
                 max_idle_sources: int = MAX_IDLE_SOURCES) -> None:
        if min(max_per_source, max_sniffing_per_source, rate_per_source) < 0:
            raise ValueError("limits must not be negative")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be 0-128")
        self.max_per_source = max_per_source
        self.max_sniffing_per_source = max_sniffing_per_source
        self.rate = float(rate_per_source)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate)
        if self.rate and self.burst < 1:
            raise ValueError("burst must be at least 1")
        self.max_idle_sources = max_idle_sources
        self._v6_mask = ((1 << 128) - 1) ^ ((1 << (128 - ipv6_prefix)) - 1)
        self._active: dict = {}                     # key -> _Source with live connections or sniffs
        self._idle: OrderedDict = OrderedDict()     # key -> _Source whose bucket is refilling, LRU first

    @property
    def enabled(self) -> bool:
        """False when every limit is off: callers may skip all calls (consistently)."""
        return bool(self.max_per_source or self.max_sniffing_per_source or self.rate)

    def key(self, ip) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The key a source is counted under; every method takes this or the address text."""
        addr = source_ip(ip)
        if addr.version == 6 and self._v6_mask != (1 << 128) - 1:
            addr = ipaddress.IPv6Address(int(addr) & self._v6_mask)
        return addr

    def admit(self, ip, now: float) -> str | None:
        """Count a new connection from `ip`, or return why it is refused."""
        key = self.key(ip)
        src = self._take(key)
        reason = None
        if self.max_per_source and src.conns >= self.max_per_source:
            reason = Reason.LIMIT_SOURCE
        elif self.rate:
            self._refill(src, now)
            if src.tokens < 1:
                reason = Reason.LIMIT_RATE
            else:
                src.tokens -= 1
        if reason is None:
            src.conns += 1
        self._settle(key, src)
        self._tidy(now)
        return reason

    def release(self, ip) -> None:
        key = self.key(ip)
        src = self._active.get(key)
        if src is None or src.conns == 0:
            raise ValueError(f"release({key}) without an admitted connection")
        src.conns -= 1
        self._settle(key, src)

    def sniff_started(self, ip) -> str | None:
        """Count a connection entering the sniff stage, or return Reason.LIMIT_SNIFFING."""
        key = self.key(ip)
        src = self._take(key)
        if self.max_sniffing_per_source and src.sniffing >= self.max_sniffing_per_source:
            self._settle(key, src)
            return Reason.LIMIT_SNIFFING
        src.sniffing += 1
        self._settle(key, src)
        return None

    def sniff_ended(self, ip) -> None:
        key = self.key(ip)
        src = self._active.get(key)
        if src is None or src.sniffing == 0:
            raise ValueError(f"sniff_ended({key}) without sniff_started")
        src.sniffing -= 1
        self._settle(key, src)

    def connections(self, ip) -> int:
        src = self._active.get(self.key(ip))
        return src.conns if src else 0

    def sniffing(self, ip) -> int:
        src = self._active.get(self.key(ip))
        return src.sniffing if src else 0

    def prune(self, now: float) -> int:
        """Drop every idle source whose bucket is full again; returns how many were dropped."""
        full = [key for key, src in self._idle.items() if self._full(src, now)]
        for key in full:
            del self._idle[key]
        return len(full)

    def __len__(self) -> int:
        """Sources tracked (live and idle)."""
        return len(self._active) + len(self._idle)

    # -- internals

    def _take(self, key) -> _Source:
        src = self._active.get(key)
        if src is None:
            src = self._idle.pop(key, None) or _Source(self.burst)
        return src

    def _settle(self, key, src: _Source) -> None:
        """File `src` where it belongs now: live, idle (bucket refilling) or nowhere."""
        if src.conns or src.sniffing:
            self._active[key] = src
            return
        self._active.pop(key, None)
        if self.rate and src.tokens < self.burst:
            self._idle[key] = src
            self._idle.move_to_end(key)
            while len(self._idle) > self.max_idle_sources:
                self._idle.popitem(last=False)

    def _tidy(self, now: float) -> None:
        for _ in range(_TIDY_PER_ADMIT):
            if not self._idle:
                return
            key, src = next(iter(self._idle.items()))
            if not self._full(src, now):
                return
            del self._idle[key]

    def _refill(self, src: _Source, now: float) -> None:
        elapsed = now - src.stamp
        if elapsed > 0:
            src.tokens = min(self.burst, src.tokens + elapsed * self.rate)
            src.stamp = now

    def _full(self, src: _Source, now: float) -> bool:
        return src.tokens + max(0.0, now - src.stamp) * self.rate >= self.burst
