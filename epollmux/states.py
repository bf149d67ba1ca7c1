"""The one idiom of every state machine in epollmux, and its error.

Owns: `TransitionError` and the rule below.

Each machine (connection phases in serve/phases.py, TLS engine states in tls/engine.py, relay
direction states in relay/direction.py, kernel-relay states in relay/kernel.py, supervisor states in
process/states.py) is an `enum.StrEnum` (its values are the labels logs and metrics show) plus a
plain table `NEXT: {state: (allowed next states, ...)}`, checked in the one `_set_state` (or
`_set_phase`) of its owner:

    if new not in NEXT[self.state]:
        raise TransitionError.of("what", self.state, new)

Tuples, not sets: `in` a tuple of members compares identity first, with no hashing on the hot path.
No attributes on enum members, no `_value_`.
Must not import anything of epollmux.
"""

from __future__ import annotations


class TransitionError(RuntimeError):
    """A state change its machine's table does not allow: a bug, never a peer's doing."""

    @classmethod
    def of(cls, machine: str, old: str, new: str) -> "TransitionError":
        return cls(f"{machine} state {old} -> {new} not allowed")
