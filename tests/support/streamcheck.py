"""Byte-stream comparison for relay tests: is what a receiver got exactly what was sent (or, for a
connection cut on purpose, a prefix of it), and if not, which range was duplicated or lost.

Streams are seeded random bytes, so a short run of received bytes locates itself in what was sent:
a duplicate is reported as "duplicated N bytes at offset X (a second copy of sent[A:B])", a loss as
"lost N bytes at offset X". Works on many-MiB streams at C speed (slice comparisons, bytes.find).
"""

from __future__ import annotations

PROBE = 64        # bytes at the first difference used to find where they came from


def first_difference(got: bytes, want: bytes) -> int:
    """The first offset where got and want differ (min of the lengths if one is a prefix of the other)."""
    a, b = memoryview(got), memoryview(want)
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 1:                  # a[:lo] == b[:lo], a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def check(got: bytes, want: bytes, prefix: bool = False) -> str | None:
    """None if got == want (prefix=True: if got is a prefix of want, the connection having been cut);
    else one line saying what went wrong first."""
    if (want[:len(got)] == got) if prefix else (got == want):
        return None
    n = first_difference(got, want)
    if n == len(got):                   # got stopped early (prefix mode never comes here)
        return f"lost {len(want) - n} bytes at the end (offset {n}, got {len(got)} of {len(want)})"
    probe = got[n:n + PROBE]
    p = want.find(probe) if len(probe) >= 16 or n + len(probe) == len(got) else -1
    if p == -1 or p == n:
        return f"corrupted from offset {n}: got {len(got)} bytes for {len(want)}"
    if p < n:
        k = n - p
        rest_ok = _matches(got[n + k:], want[n:], prefix)
        return (f"duplicated {k} bytes at offset {n} (a second copy of sent[{p}:{n}])"
                + ("" if rest_ok else "; more differences after it"))
    k = p - n
    rest_ok = _matches(got[n:], want[p:], prefix)
    return f"lost {k} bytes at offset {n} (sent[{n}:{p}])" + ("" if rest_ok else "; more differences after it")


def _matches(got: bytes, want: bytes, prefix: bool) -> bool:
    return want[:len(got)] == got if prefix else got == want
