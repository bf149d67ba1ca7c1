"""Relay pieces alone (no daemon)."""

from __future__ import annotations

import gc
import socket
import weakref

from epollmux.channels import ChannelPool
from epollmux.endpoints import PlainEndpoint
from epollmux.relay import Direction


class Endpoint(PlainEndpoint):
    """A PlainEndpoint that can be weakly referenced (no __slots__), to see when its directions go."""


def test_discarded_directions_are_freed_without_the_cyclic_gc():
    """Regression: up.other/down.other kept closed connections (and their TLS engines) alive until a GC
    pass, which the worker's raised GC thresholds made rare: RSS grew 51 -> 125 MB under TLS load."""
    a, b = socket.socketpair()
    pool = ChannelPool("splice", 65536, 4)
    ea, eb = Endpoint(a), Endpoint(b)
    up = Direction(ea, eb, pool)
    down = Direction(eb, ea, pool)
    up.other, down.other = down, up
    refs = [weakref.ref(ea), weakref.ref(eb)]
    del ea, eb
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
