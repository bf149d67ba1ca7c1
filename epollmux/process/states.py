"""The supervisor's states and the transitions between them (the idiom of epollmux/states.py).

Owns: the supervisor's `State` members and `NEXT` table.
Must not import anything but the standard library.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"


NEXT: dict[State, tuple[State, ...]] = {
    State.STARTING: (State.RUNNING, State.STOPPING),
    State.RUNNING: (State.RELOADING, State.STOPPING),
    State.RELOADING: (State.RUNNING, State.STOPPING),
    State.STOPPING: (),
}
