"""Hands established TCP pairs to the kernel: BPF socket maps and an sk_skb verdict program.

Owns: loading the maps and the program once per process (`Sockmap.load` raises
`SockmapUnavailable`, with the verifier log; the bpf(2) side is `relay/bpf.py`), adding a
client/backend pair and removing it, and the byte counts (TCP_INFO, the program's own) that tell
when EOF may be passed on, how much kernel memory a direction holds, and what to log (the
program's counter only).

How the kernel relays. `targets` (a SOCKHASH) holds each socket of a pair under the *other*
socket's cookie (SO_COOKIE: unique per boot, IPv4 and IPv6 alike). `sources` (a SOCKHASH carrying
the verdict program) holds each socket under its own cookie: its incoming bytes go to the program
instead of its receive queue. The program redirects each skb to the egress of the socket found in
`targets` under the receiving socket's cookie, adds its length to that direction's counter in
`usage`, and writes the cookie into the ring buffer `ring` whenever the counter crosses a multiple
of `notify` bytes: the process's only wake-up while payload flows.

Kernel behaviour the caller must know (tests/unit/test_sockmap.py shows each; Linux 6.18):
- Redirected bytes raise no epoll event on either socket, not even EPOLLIN.
- No backpressure: bytes for a destination that cannot take more wait in a kernel queue charged
  to no socket (invisible in `ss -m`), without bound; the sender is never slowed (a stalled reader
  let 2.4 GB pile up in 6 s on loopback). Nothing from user space stops a paired source safely,
  so watch `Flow.backlog()` on each ring notification and end the connection over a bound:
  - taking the source out of the verdict map can meet an skb in flight (no program: dropped
    after TCP acked it);
  - SO_RCVLOWAT alone does not keep the data-ready hook off: the kernel caps it at half the
    receive buffer and runs the hook anyway under memory pressure; TCP_WINDOW_CLAMP alone leaves
    a window of ~1 KB that the sender fills as fast as the hook empties it;
  - the minimum SO_RCVBUF (with SO_RCVLOWAT) does stop the sender, but the TCP window then stays
    under one sender MSS after the buffer is restored (rcv_ssthresh ~2 KB, only incoming data
    grows it, the sender only sends window probes with exponential backoff): one run stalled
    for good after 750 KB.
- Never pair a socket the process has read from (a PROXY header taken with recv): the kernel hands
  the program whole skbs, so the rest of a partly read skb would be relayed with the read bytes
  in front. `Flow` refuses such a socket (EOPNOTSUPP).
- Bytes queued before pairing (peeked sniff bytes, a server's banner) move only once the socket is
  woken; `add_pair` wakes both (SO_RCVLOWAT runs the data-ready hook), so they go first, in order.
  Write a PROXY header to the backend before `add_pair`.
- A paired socket cannot be read (recv waits or says EAGAIN), SIOCINQ says 0,
  whatever is queued.
- FIN reaches the source (EPOLLRDHUP) and is not passed on; redirected bytes may still be queued
  for the destination: shut it down for writing once `Flow.pending(eof=True)` is 0, or lose the
  tail. The program drops the empty skb of a bare FIN: redirected, it would fail on the
  destination, set EPIPE on it and disable redirects into it.
- RST: EPOLLERR|EPOLLHUP|EPOLLRDHUP and SO_ERROR ECONNRESET on the socket that was reset.
- The kernel sends redirected bytes from a kworker (sk_psock_backlog). Each time it finds the
  destination's send queue full it gives up for one jiffy (4 ms at HZ=250; ~50-100 times a second
  on one loopback stream). A send buffer autotuned up to tcp_wmem's 4 MiB drains in less than
  that at 10 Gbit/s and the socket idles: `add_pair` fixes both send buffers at `sndbuf`
  (SO_SNDBUFFORCE) so the queue outlasts the wait. That queue stays charged to the socket
  (`ss -m`) and under the kernel's tcp_mem limits, unlike the redirect backlog.
- Only established sockets can be added: a socket that has received a FIN (CLOSE_WAIT) or sent one
  is refused (EOPNOTSUPP); the caller relays that connection itself. Removing a pair discards what
  is still queued for its sockets: remove only when both directions are done or dead.
- Counts: the program adds each redirected skb's length to its direction's counter in `usage`
  (one map read, no two-syscall sum); at EOF that is exactly the bytes relayed.

Must not import the reactor, the configuration, the relay or anything that knows a protocol.
"""

from __future__ import annotations

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import termios

from epollmux.relay import bpf
from epollmux.relay.bpf import BPF_NOEXIST, RING_SIZE, SockmapUnavailable

__all__ = ["Flow", "Pair", "Sockmap", "SockmapUnavailable", "cookie", "tcp_bytes", "unread", "unsent"]

NOTIFY = 4 << 20                   # default: wake the process every 4 MiB redirected per direction
SNDBUF = 16 << 20                  # default send buffer of a paired socket (the kernel doubles it)
SO_COOKIE = 57                     # getsockopt(SOL_SOCKET): u64 socket cookie
SO_SNDBUFFORCE = 32                # SO_SNDBUF past net.core.wmem_max (CAP_NET_ADMIN)
TCP_INFO_LEN = 256
TCPI_STATE = 0                     # struct tcp_info offsets, stable since Linux 4.1
TCPI_BYTES_ACKED = 120             # u64; counts a SYN sent by connect() and an acked FIN as a byte each
TCPI_BYTES_RECEIVED = 128          # u64; counts a received FIN as a byte
FIN_RECEIVED = (8, 9, 11)          # TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING
STABLE_TRIES = 16

# --- what the kernel knows about one socket -----------------------------------------------------

def cookie(sock: socket.socket) -> int:
    return struct.unpack("<Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def _info(sock: socket.socket) -> bytes:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    if len(info) < TCPI_BYTES_RECEIVED + 8:
        raise OSError(errno.EOPNOTSUPP, "TCP_INFO without byte counters")
    return info


def tcp_bytes(sock: socket.socket) -> tuple[int, int]:
    """(bytes received, bytes acked by the peer) from TCP_INFO; see TCPI_* for how SYN/FIN count."""
    acked, received = struct.unpack_from("<QQ", _info(sock), TCPI_BYTES_ACKED)
    return received, acked


def _ioctl_int(sock: socket.socket, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"))[0]


def unread(sock: socket.socket) -> int:
    """SIOCINQ: bytes in the receive queue (0 for a socket whose bytes go to the program)."""
    return _ioctl_int(sock, termios.FIONREAD)


def unsent(sock: socket.socket) -> int:
    """SIOCOUTQ: bytes in the send queue, written but not yet acked by the peer."""
    return _ioctl_int(sock, termios.TIOCOUTQ)


def _consumed(sock: socket.socket) -> int:
    """Data bytes the process has taken out of the receive queue (call before pairing)."""
    for _ in range(STABLE_TRIES):
        info = _info(sock)
        queued = unread(sock)
        again = _info(sock)
        received = struct.unpack_from("<Q", info, TCPI_BYTES_RECEIVED)[0]
        if received == struct.unpack_from("<Q", again, TCPI_BYTES_RECEIVED)[0]:
            return received - (info[TCPI_STATE] in FIN_RECEIVED) - queued
    raise OSError(errno.EAGAIN, "receive counters kept moving")


def _written(sock: socket.socket, exact: bool) -> int:
    """Bytes written into the send queue so far (acked + unacked). Acked is read first, so an ACK
    in between makes the sum too small, never too large; `exact` retries until it is stable."""
    for _ in range(STABLE_TRIES):
        acked = tcp_bytes(sock)[1]
        total = acked + unsent(sock)
        if not exact or tcp_bytes(sock)[1] == acked:
            return total
    raise OSError(errno.EAGAIN, "send counters kept moving")


def _set_buf(sock: socket.socket, force: int, plain: int, size: int) -> None:
    """A fixed socket buffer (SO_SNDBUFFORCE/SO_RCVBUFFORCE); without CAP_NET_ADMIN as much as
    net.core.wmem_max/rmem_max allow."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _wake(sock: socket.socket) -> None:
    """Restore the default SO_RCVLOWAT; doing so runs the data-ready hook on what is queued."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


# --- one direction of a pair -------------------------------------------------------------------

class Flow:
    """Bytes reaching `src` go to `dst`. Counts start when the pair is added."""

    __slots__ = ("maps", "src", "dst", "key", "in_base", "out_base")

    def __init__(self, maps: "Sockmap", src: socket.socket, dst: socket.socket):
        self.maps = maps
        self.src, self.dst = src, dst
        self.key = cookie(src)
        self.in_base = _consumed(src)
        if self.in_base:
            raise OSError(errno.EOPNOTSUPP, f"{self.in_base} bytes were read from this socket: the kernel "
                                            "would relay the rest of their skb again")
        self.out_base = _written(dst, exact=True)

    def redirected(self) -> int:
        """Bytes the program has handed on to dst (its own counter, one map read: exact)."""
        return self.maps._used(self.key)

    def delivered(self, exact: bool = False) -> int:
        """Bytes written into dst's send queue since pairing (kernel or process); inexact reads may
        come out low by what an ACK arriving between the two readings moved."""
        return _written(self.dst, exact) - self.out_base

    def backlog(self) -> int:
        """Bytes redirected but not yet in dst's send queue: kernel memory charged to no socket."""
        return max(0, self.redirected() - self.delivered())

    def received(self, eof: bool | None = None) -> int:
        """Data bytes src has received since pairing. TCP_INFO counts a received FIN as a byte: pass
        eof=True once the FIN was seen (EPOLLRDHUP, no error); None reads it from the TCP state."""
        info = _info(self.src)
        if eof is None:
            eof = info[TCPI_STATE] in FIN_RECEIVED
        return struct.unpack_from("<Q", info, TCPI_BYTES_RECEIVED)[0] - eof - self.in_base

    def pending(self, eof: bool | None = None) -> int:
        """Bytes src has received that are not in dst's send queue yet. 0 with eof=True: dst has
        everything, shut it down for writing now. Errs high, never low."""
        return max(0, self.received(eof) - self.delivered())

    def moved(self) -> int:
        """Bytes this direction has put into dst, for the access log: the program's counter. Exact
        once the direction ended in EOF (then every redirected byte reached dst)."""
        return self.redirected()


class Pair:
    __slots__ = ("up", "down")

    def __init__(self, up: Flow, down: Flow):
        self.up = up          # client -> backend
        self.down = down      # backend -> client


# --- the maps and their program ----------------------------------------------------------------

class Sockmap:
    """The maps with the verdict program; load once per process, shared by every pair."""

    def __init__(self, fds: dict[str, int], max_entries: int, notify: int, sndbuf: int = SNDBUF):
        self.fds = fds
        self.max_entries = max_entries
        self.notify = notify
        self.sndbuf = sndbuf
        self.flows: dict[int, Flow] = {}        # by source cookie
        self.ring = bpf.Ring(fds["ring"], RING_SIZE)

    @classmethod
    def load(cls, max_entries: int = 65536, notify: int = NOTIFY, sndbuf: int = SNDBUF) -> "Sockmap":
        """Create the maps (room for max_entries sockets, two per pair), load the program and attach
        it. `notify` (rounded down to a power of 2): redirected bytes per direction between two
        wake-ups, the step at which the caller can watch backlogs. `sndbuf`: the send buffer each
        paired socket gets (0: leave it to autotuning)."""
        shift = max(notify, 4096).bit_length() - 1
        fds = bpf.load_maps(max_entries, shift)
        return cls(fds, max_entries, 1 << shift, sndbuf)

    def fileno(self) -> int:
        """Readable (EPOLLIN) when a direction crossed a notify step: then call `notified`."""
        return self.fds["ring"]

    def notified(self) -> list[Flow]:
        """The flows that crossed a notify step since the last call (oldest first, no repeats)."""
        flows = {}
        for key in self.ring.consume():
            flow = self.flows.get(key)
            if flow is not None:
                flows[key] = flow
        return list(flows.values())

    def add_pair(self, client: socket.socket, backend: socket.socket) -> Pair:
        """Relay client<->backend in the kernel from now on. Both: connected, established TCP
        (IPv4 or IPv6), no longer read by the process. Bytes already queued (peeked) are relayed
        first. On OSError (map full: E2BIG; socket refused: EOPNOTSUPP, e.g. FIN already received)
        nothing is left behind and the caller relays the pair itself."""
        pair = Pair(Flow(self, client, backend), Flow(self, backend, client))
        added: list[tuple[str, int]] = []
        try:
            for flow in (pair.up, pair.down):
                self._update("usage", flow.key, struct.pack("<Q", 0), BPF_NOEXIST)
                added.append(("usage", flow.key))
            for flow in (pair.up, pair.down):
                self._update("targets", flow.key, struct.pack("<I", flow.dst.fileno()), BPF_NOEXIST)
                added.append(("targets", flow.key))
            for flow in (pair.up, pair.down):
                self._update("sources", flow.key, struct.pack("<I", flow.src.fileno()), BPF_NOEXIST)
                added.append(("sources", flow.key))
        except OSError:
            for name, key in reversed(added):
                self._delete(name, key)
            raise
        self.flows[pair.up.key] = pair.up
        self.flows[pair.down.key] = pair.down
        if self.sndbuf:
            for sock in (client, backend):
                _set_buf(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, self.sndbuf)
        _wake(client)
        _wake(backend)
        return pair

    def remove_pair(self, pair: Pair) -> None:
        """Take both sockets out (closing them does too). What is still queued for them is lost."""
        for flow in (pair.up, pair.down):
            self.flows.pop(flow.key, None)
            for name in ("sources", "targets", "usage"):
                self._delete(name, flow.key)

    def close(self) -> None:
        self.ring.close()
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        self.flows.clear()

    def _used(self, key: int) -> int:
        return bpf.lookup_u64(self.fds["usage"], key)

    def _update(self, name: str, key: int, value: bytes, flags: int) -> None:
        bpf.update(self.fds[name], key, value, flags)

    def _delete(self, name: str, key: int) -> None:
        bpf.delete(self.fds[name], key)
