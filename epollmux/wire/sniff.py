"""The sniffing decision: which route, if any, the bytes peeked so far select.

Owns: DESIGN §4's strict-order rule over a route list.  Pure: it calls the probes from the PROBES table
and never names a protocol.  The caller owns peeking, the probe timeout (`on_timeout`), EOF and the
`max_probe_bytes` cap (it passes full=True once the buffer is at the cap).

Must not import: socket, select, the reactor, connection or config modules.

Rules:
- Routes are tried in order; a route's MATCH is taken only when every earlier route said NEXT.  The first
  AGAIN stops the walk: wait for more bytes (done=False), even if a later route would match.
- full=True (no more bytes will come): AGAIN counts as NEXT.
- All NEXT: the last route whose probe always matches would take it; such a probe (`any`) already
  MATCHes when the walk reaches it, so all-NEXT means no such route is reachable: close (route=None).
  A route after an `any` route is therefore never chosen.
- With b"" every probe but `any` says AGAIN, so only a list starting with `any` decides at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from epollmux.wire.probes import PROBES, Verdict


@dataclass(frozen=True)
class Decision:
    route: int | None                  # index into routes of the chosen route, or None
    done: bool                         # True: decided (route chosen, or None = close); False: wait
    verdicts: tuple[Verdict, ...]      # one per route evaluated, in order (for the debug log)


def decide(data: bytes, routes: Sequence[tuple[str, Mapping]], *, full: bool = False) -> Decision:
    """Apply the routes' probes to `data` in strict order."""
    verdicts: list[Verdict] = []
    for index, (probe, opts) in enumerate(routes):
        verdict = PROBES[probe].func(data, opts)
        if verdict is Verdict.AGAIN and full:
            verdict = Verdict.NEXT
        verdicts.append(verdict)
        if verdict is Verdict.MATCH:
            return Decision(index, True, tuple(verdicts))
        if verdict is Verdict.AGAIN:
            return Decision(None, False, tuple(verdicts))
    return Decision(None, True, tuple(verdicts))
