"""Which listeners defer accept (serve/sniffing.py `defers`), and a real deferring listener's socket: a silent
client is handed over after the deferral with its SYN-ACK retransmitted, which `probe_delay` subtracts."""

from __future__ import annotations

import select
import socket
import time
from types import SimpleNamespace

from epollmux.serve.sniffing import DEFER_SECONDS, defers, probe_delay


def listener(*probes: str, proxy: str = "none"):
    return SimpleNamespace(routes=tuple(SimpleNamespace(probe=p) for p in probes), proxy_protocol=proxy)


def test_only_listeners_whose_clients_must_speak_first_defer():
    assert defers(listener("ssh", "tls", "any"), 2.0)
    assert defers(listener("http"), 1.0)
    assert not defers(listener("any"), 2.0)                 # server-speaks-first clients are served at once
    assert defers(listener("any", proxy="v1"), 2.0)         # the PROXY header comes first all the same
    assert not defers(listener("ssh", "any"), 0.5)          # the deferral would outlast probe_timeout


def test_a_silent_client_of_a_deferring_socket_arrives_late_and_its_wait_is_subtracted():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    lst.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_SECONDS)
    poll = select.epoll()
    poll.register(lst.fileno(), select.EPOLLIN)
    with poll, lst, socket.create_connection(lst.getsockname(), timeout=10) as silent, \
            socket.create_connection(lst.getsockname(), timeout=10) as talker:
        talker.sendall(b"SSH-2.0-x\r\n")
        assert poll.poll(10)                                  # the talker: at once, with its bytes
        first, _ = lst.accept()
        assert first.recv(64, socket.MSG_PEEK) == b"SSH-2.0-x\r\n"
        assert probe_delay(listener("ssh"), 2.0, first, True) == 2.0
        t0 = time.monotonic()
        assert poll.poll(10)                                  # the silent one: after the deferral
        second, _ = lst.accept()
        assert time.monotonic() - t0 >= DEFER_SECONDS * 0.5
        assert probe_delay(listener("ssh"), 2.0, second, True) == 2.0 - DEFER_SECONDS
        assert probe_delay(listener("ssh"), 2.0, second, False) == 2.0     # not the first wait
        assert probe_delay(listener("any"), 2.0, second, True) == 2.0      # a listener that does not defer
        first.close()
        second.close()
