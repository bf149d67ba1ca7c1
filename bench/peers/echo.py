"""A small epoll echo server for the idle section: `python3 -m bench.peers.echo HOST PORT`.

Holds as many connections as its fd limit allows and echoes whatever arrives (the idle clients
send one byte at a time, so a send never blocks in practice; if it would, the bytes are dropped
and the client's round-trip check fails, which is what we want to see). Ends on SIGTERM.
"""

from __future__ import annotations

import select
import signal
import socket
import sys


def main(host: str, port: int) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(4096)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    while True:
        for fd, _ in ep.poll(1.0, 512):
            if fd == lsock.fileno():
                for _ in range(256):
                    try:
                        c, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:      # out of fds: let the clients see the failure
                        break
                    c.setblocking(False)
                    conns[c.fileno()] = c
                    ep.register(c.fileno(), select.EPOLLIN)
                continue
            c = conns.get(fd)
            if c is None:
                continue
            try:
                data = c.recv(65536)
                if data:
                    c.send(data)
                    continue
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                pass
            ep.unregister(fd)
            del conns[fd]
            c.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
