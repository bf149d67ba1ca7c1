"""A listening socket's place in the worker's loop, shared by TCP (listener.Acceptor) and UDP
(udplistener.UdpListener): armed in the reactor or not, stopped, closed, paused for PAUSE seconds after an
error (fd exhaustion) and re-armed unless the worker drains.

Owns: arming only; what a readable event does is the subclass's `on_event`.
Must not import the listener, the connection or flow modules, nor any wire/ module.
"""

from __future__ import annotations

import socket

from epollmux.reactor import EXCLUSIVE, IN

PAUSE = 0.5                 # seconds a socket stays unarmed after an error it cannot serve through


class Armed:
    def __init__(self, ctx, listener, sock: socket.socket):
        self.ctx = ctx
        self.listener = listener
        self.sock = sock
        self.fd = sock.fileno()
        self.family = int(sock.family)
        self.armed = False
        self.resume_timer = None

    def start(self) -> None:
        if not self.armed and self.sock.fileno() >= 0:
            self.ctx.reactor.register(self.fd, IN | EXCLUSIVE, self)
            self.armed = True

    def stop(self) -> None:
        if self.resume_timer is not None:
            self.resume_timer.cancel()
            self.resume_timer = None
        if self.armed:
            self.ctx.reactor.unregister(self.fd)
            self.armed = False

    def close(self) -> None:
        """Stop and close this process's copy of the socket (TCP: once no process holds it, new clients
        are refused at once instead of waiting in a queue nobody accepts from; UDP: the supervisor and the
        next workers keep it, and this worker's flows go on through their own sockets)."""
        self.stop()
        self.sock.close()

    def pause(self) -> None:
        if self.resume_timer is not None:
            return
        self.stop()
        self.resume_timer = self.ctx.reactor.call_later(PAUSE, self._resume)

    def _resume(self) -> None:
        self.resume_timer = None
        if not self.ctx.draining:
            self.start()
