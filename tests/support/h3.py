"""HTTP/3 over aioquic: a server program (run as a peer process: `python -m support.h3 CERT KEY PORT BODY`)
that answers every request with BODY, and `get()`, a real HTTP/3 client request from the test process."""

from __future__ import annotations

import asyncio
import sys

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated


class _Server(QuicConnectionProtocol):
    body = b""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = None

    def quic_event_received(self, event) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.http = H3Connection(self._quic)
        if self.http is None:
            return
        for ev in self.http.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.http.send_headers(ev.stream_id, [(b":status", b"200"), (b"content-type", b"text/plain")])
                self.http.send_data(ev.stream_id, self.body, end_stream=True)
                self.transmit()


async def _serve(cert: str, key: str, port: int, body: bytes) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(cert, key)
    _Server.body = body
    await serve("127.0.0.1", port, configuration=config, create_protocol=_Server)
    print("serving", flush=True)
    await asyncio.Event().wait()


class _Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.body = b""
        self.done = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event) -> None:
        for ev in self.http.handle_event(event):
            if isinstance(ev, DataReceived):
                self.body += ev.data
            if isinstance(ev, (DataReceived, HeadersReceived)) and ev.stream_ended and not self.done.done():
                self.done.set_result(self.body)

    def request(self, authority: str) -> None:
        stream = self._quic.get_next_available_stream_id()
        self.http.send_headers(stream, [(b":method", b"GET"), (b":scheme", b"https"),
                                        (b":authority", authority.encode()), (b":path", b"/")], end_stream=True)
        self.transmit()


async def _get(port: int, name: str, cafile: str, timeout: float) -> bytes:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=name)
    config.load_verify_locations(cafile)
    async with connect("127.0.0.1", port, configuration=config, create_protocol=_Client) as client:
        client.request(name)
        return await asyncio.wait_for(client.done, timeout)


def get(port: int, name: str, cafile: str, timeout: float = 15.0) -> bytes:
    """One HTTP/3 GET https://name/ sent to 127.0.0.1:port, the certificate verified against cafile."""
    return asyncio.run(asyncio.wait_for(_get(port, name, cafile, timeout), timeout + 5))


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()))
