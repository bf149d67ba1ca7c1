"""The two ends a relay moves bytes between: a plain socket, or a socket behind a TLS engine.

Owns: `PlainEndpoint` (bytes straight from and to the socket's fd) and `TLSEndpoint` (plaintext
from and to a `TLSEngine`, whose ciphertext it moves over the socket, keeping what the socket
cannot take yet and refusing more plaintext until it is sent: backpressure). Both offer
readinto / write / shutdown_write / flush / pending_output (TLS also runs the handshake, `handshake()`);
`zero_copy` says whether a pipe may stand between two of them; `holds_output` whether pending_output() can
ever be True (a plain socket keeps nothing: no call needed); `drained`, whether a readinto that came back short left the socket empty (and
the engine: TLS sets it per read; a plain socket's short read always does). relay.Direction.pump says when
that may be trusted. Errors that end the connection are raised as `errors.Closed(reason)`.
Must not import the reactor, the configuration or the connection.
"""

from __future__ import annotations

import os
import socket

from epollmux import errors
from epollmux.tls.engine import CloseReason, TLSEngine

SEND_CHUNK = 256 * 1024
RECV_CHUNK = 64 * 1024
_RECV_VIEW = memoryview(bytearray(RECV_CHUNK))   # one per process: ciphertext passes through it into a BIO


class PlainEndpoint:
    __slots__ = ("sock", "fd")
    zero_copy = True
    holds_output = False
    drained = True               # TCP copies all it holds, up to the size asked: a short read emptied it

    def __init__(self, sock: socket.socket, fd: int = -1):
        self.sock = sock
        self.fd = fd if fd >= 0 else sock.fileno()     # fd: the caller's copy of sock.fileno() (saves a call)

    def readinto(self, view: memoryview) -> int:
        return os.readv(self.fd, (view,))

    def write(self, view: memoryview) -> int:
        return os.write(self.fd, view)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def flush(self) -> bool:
        return True

    def pending_output(self) -> bool:
        return False


class TLSEndpoint:
    __slots__ = ("sock", "fd", "engine", "_out", "_shut", "pushback", "prefix", "drained")
    zero_copy = False
    holds_output = True

    def __init__(self, sock: socket.socket, engine: TLSEngine, prefix: str = "", fd: int = -1):
        self.sock = sock
        self.fd = fd if fd >= 0 else sock.fileno()
        self.engine = engine
        self.prefix = prefix     # before close reasons: "backend-" says the backend's TLS ended it
        self._out = b""          # ciphertext taken from the engine that the socket did not take yet
        self._shut = False       # shut the TCP write side once everything is sent
        self.pushback = b""      # plaintext read ahead (inner sniffing) to deliver first
        self.drained = False

    # --- ciphertext ------------------------------------------------------------------------
    def receive(self) -> int:
        """Feed the engine what the socket has: 0 when the engine has no room, 2 after a short read (the
        socket was emptied), else 1. BlockingIOError if empty."""
        engine = self.engine
        room = engine.ciphertext_room()
        if room <= 0:
            return 0
        size = room if room < RECV_CHUNK else RECV_CHUNK
        n = self.sock.recv_into(_RECV_VIEW, size)
        if n:
            engine.feed_ciphertext(_RECV_VIEW[:n])
        else:
            engine.feed_eof()
        return 2 if 0 < n < size else 1

    def handshake(self):
        """Run the engine's handshake as far as the bytes allow, sending what it says: Event.HANDSHAKE_DONE,
        a CloseReason (engine.detail has the why), or None (wait for the socket)."""
        engine = self.engine
        outgoing = engine.outgoing
        while True:
            result = engine.step()
            if self._out or outgoing.pending:
                self.flush()
            if result is not None:
                return result
            try:
                if not self.receive():
                    return None
            except BlockingIOError:
                return None

    def flush(self) -> bool:
        """Send pending ciphertext; True when nothing is left (then a requested shutdown happens)."""
        out = self._out
        outgoing = self.engine.outgoing
        while out or outgoing.pending:
            if not out:
                out = outgoing.read(SEND_CHUNK)
            try:
                sent = self.sock.send(out)
            except BlockingIOError:
                self._out = out
                return False
            out = memoryview(out)[sent:] if sent < len(out) else b""    # the rest is sliced, never copied
        self._out = b""
        if self._shut:
            self._shut = False
            self.sock.shutdown(socket.SHUT_WR)
        return True

    def pending_output(self) -> bool:
        return bool(self._out) or self._shut or self.engine.outgoing.pending > 0

    # --- plaintext -------------------------------------------------------------------------
    def readinto(self, view: memoryview) -> int:
        self.drained = False
        if self.pushback:
            n = min(len(view), len(self.pushback))
            view[:n] = self.pushback[:n]
            self.pushback = self.pushback[n:]
            return n
        engine = self.engine
        short = False            # a recv of this call emptied the socket
        while True:
            result = engine.read_into(view)
            if engine.outgoing.pending:
                self.flush()     # a read can produce records to send (a TLS 1.3 KeyUpdate reply)
            if isinstance(result, CloseReason):
                if result is CloseReason.CLOSE_NOTIFY:
                    return 0
                raise errors.Closed(result.on(self.prefix), engine.detail)
            if result:
                # drained: the socket was empty at our recv and the engine holds no whole record either
                self.drained = short and engine.starved
                return result
            got = self.receive()
            if not got:
                raise BlockingIOError
            short = got == 2

    def write(self, view: memoryview) -> int:
        engine = self.engine
        if (self._out or engine.outgoing.pending) and not self.flush():
            raise BlockingIOError
        n = engine.write_plaintext(view)
        if n == 0:
            if engine.reason is not None:
                raise errors.Closed(engine.reason.on(self.prefix), engine.detail)
            raise BlockingIOError
        self.flush()
        return n

    def shutdown_write(self) -> None:
        """close_notify, then the TCP write side once it is sent."""
        self.engine.close()
        self._shut = True
        self.flush()
