"""Reassembly of a byte stream sent as (offset, bytes) pieces, in any order, possibly overlapping: the
CRYPTO frames of QUIC Initials and the handshake fragments of DTLS records.

Owns: the contiguous prefix of such a stream.  Must not import: socket, select, the reactor, connection or
config modules.  Pure.
"""

from __future__ import annotations

from collections.abc import Iterable


def prefix(pieces: Iterable[tuple[int, bytes]]) -> bytes:
    """The stream's bytes from offset 0 up to the first hole.  Overlapping pieces are taken as they come
    (a sender resends the same bytes at the same offset; conflicting overlaps are not detected)."""
    out = bytearray()
    for offset, data in sorted(pieces, key=lambda p: p[0]):
        if offset > len(out):
            break
        end = offset + len(data)
        if end > len(out):
            out += data[len(out) - offset:]
    return bytes(out)
