"""Relay pieces alone (no daemon)."""

from __future__ import annotations

import gc
import socket
import weakref

from epollmux.channels import ChannelPool
from epollmux.endpoints import PlainEndpoint
from epollmux.relay import Direction


def test_discarded_directions_are_freed_without_the_cyclic_gc():
    """Regression: up.other/down.other kept closed connections (and their TLS engines) alive until a GC
    pass, which the worker's raised GC thresholds made rare: RSS grew 51 -> 125 MB under TLS load."""
    a, b = socket.socketpair()
    pool = ChannelPool("splice", 65536, 4)
    up = Direction(PlainEndpoint(a), PlainEndpoint(b), pool)
    down = Direction(PlainEndpoint(b), PlainEndpoint(a), pool)
    up.other, down.other = down, up
    refs = [weakref.ref(up), weakref.ref(down)]
    gc.disable()
    try:
        up.discard()
        down.discard()
        del up, down
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()
        a.close()
        b.close()
        pool.close()
