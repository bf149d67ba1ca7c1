"""serve.backend.peer_address: an idle relayed connection keeps no address object, and its access-log line
reads the client's address back from the socket; that must give what accept() gave, also once a reset
closed the connection (when getpeername() says ENOTCONN) and for IPv6."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from epollmux.serve.backend import peer_address

pytestmark = pytest.mark.timeout(30)
TCP_CLOSE = 7


def have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_peer_address_is_what_accept_gave_even_after_a_reset(host):
    if ":" in host and not have_ipv6():
        pytest.skip("no IPv6 loopback")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, 0), family=family) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        accepted, sockaddr = listener.accept()
        try:
            assert peer_address(accepted) == sockaddr[:2]
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()                                   # RST
            deadline = time.monotonic() + 10
            while accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_CLOSE:
                assert time.monotonic() < deadline, "the RST never arrived"
                time.sleep(0.01)
            with pytest.raises(OSError):
                accepted.getpeername()
            assert peer_address(accepted) == sockaddr[:2]
        finally:
            accepted.close()
    assert peer_address(accepted) is None                    # closed: no answer, no exception
