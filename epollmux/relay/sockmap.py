"""Hands established TCP pairs to the kernel: BPF socket maps and an sk_skb verdict program.

Owns: the bpf() system call (ctypes, no library), a small assembler for the BPF instructions the
verdict program needs, loading the maps and the program once per process (`Sockmap.load` raises
`SockmapUnavailable`, with the verifier log), adding a client/backend pair and removing it, pausing
one direction, and the byte counts (TCP_INFO, the program's own) that tell when EOF may be passed
on, how much kernel memory a direction holds, and what to log (the program's counter only).

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

import ctypes
import errno
import fcntl
import mmap
import os
import platform
import socket
import struct
import termios

# --- bpf(2) ABI (include/uapi/linux/bpf.h) -------------------------------------------------------

SYS_BPF = {"x86_64": 321, "aarch64": 280}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_SOCKHASH = 18
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_SK_SKB = 14
BPF_SK_SKB_STREAM_VERDICT = 5      # attach type; without a stream parser the program sees whole skbs
BPF_ANY, BPF_NOEXIST = 0, 1        # map update flags
BPF_F_NO_PREALLOC = 1              # map flag: hash elements allocated on insert, not all at creation

FUNC_MAP_LOOKUP_ELEM = 1           # void *bpf_map_lookup_elem(map, key)
FUNC_GET_SOCKET_COOKIE = 46        # u64 bpf_get_socket_cookie(skb): cookie of the receiving socket
FUNC_SK_REDIRECT_HASH = 72         # long bpf_sk_redirect_hash(skb, map, key, flags): SK_PASS if found
FUNC_RINGBUF_OUTPUT = 130          # long bpf_ringbuf_output(ringbuf, data, size, flags)
SK_DROP, SK_PASS = 0, 1

ATTR_SIZE = 128                    # zero-filled prefix of union bpf_attr, enough for every command used
LOG_SIZE = 64 * 1024
NOTIFY = 4 << 20                   # default: wake the process every 4 MiB redirected per direction
SNDBUF = 16 << 20                  # default send buffer of a paired socket (the kernel doubles it)
RING_SIZE = 256 * 1024             # notifications, 16 bytes each (header + cookie); power of 2 pages
RING_BUSY, RING_DISCARD = 1 << 31, 1 << 30

SO_COOKIE = 57                     # getsockopt(SOL_SOCKET): u64 socket cookie
SO_SNDBUFFORCE = 32                # SO_SNDBUF past net.core.wmem_max (CAP_NET_ADMIN)
QUIET = 0x7FFFFFFF                 # SO_RCVLOWAT no receive queue reaches: the data-ready hook stays off
TCP_INFO_LEN = 256
TCPI_STATE = 0                     # struct tcp_info offsets, stable since Linux 4.1
TCPI_BYTES_ACKED = 120             # u64; counts a SYN sent by connect() and an acked FIN as a byte each
TCPI_BYTES_RECEIVED = 128          # u64; counts a received FIN as a byte
FIN_RECEIVED = (8, 9, 11)          # TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING
STABLE_TRIES = 16


class SockmapUnavailable(Exception):
    """The kernel relay cannot be used here: `reason` is one line for the log, `verifier_log` the
    verifier's output when the program was refused (else "")."""

    def __init__(self, reason: str, verifier_log: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.verifier_log = verifier_log


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: bytes) -> int:
    """Run one bpf() command on a copy of attr; return its result or raise OSError with errno."""
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf() syscall number unknown on {platform.machine()}")
    buf = ctypes.create_string_buffer(attr.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), buf, ctypes.c_uint(ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


# --- assembler --------------------------------------------------------------------------------
# An instruction is 8 bytes: opcode, dst_reg (low nibble) | src_reg (high nibble), s16 offset, s32
# imm; opcode = class | size or operand source | operation (include/uapi/linux/bpf_common.h).
# A program is a list of instructions and label names; jumps name their target label and
# `assemble` turns it into an offset counted in 8-byte slots from the next instruction.

LD, LDX, STX, JMP, ALU64 = 0x00, 0x01, 0x03, 0x05, 0x07     # classes
K, X = 0x00, 0x08                                          # operand: immediate, register
MOV, ADD, RSH = 0xB0, 0x00, 0x70                           # ALU operations
JA, JEQ, CALL, EXIT = 0x00, 0x10, 0x80, 0x90                # JMP operations
W, DW, IMM, MEM = 0x00, 0x18, 0x00, 0x60                   # sizes: u32, u64; modes
PSEUDO_MAP_FD = 1                                          # src_reg of a 64-bit load: imm is a map fd
R0, R1, R2, R3, R4, R6, R9, FP = 0, 1, 2, 3, 4, 6, 9, 10   # r1-r5 args, r6-r9 kept across calls, r10 frame


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def mov(dst: int, src: int) -> bytes:                   # dst = src
    return _insn(ALU64 | X | MOV, dst, src)


def mov_imm(dst: int, imm: int) -> bytes:               # dst = imm (sign-extended)
    return _insn(ALU64 | K | MOV, dst, imm=imm)


def add(dst: int, src: int) -> bytes:                   # dst += src
    return _insn(ALU64 | X | ADD, dst, src)


def add_imm(dst: int, imm: int) -> bytes:               # dst += imm
    return _insn(ALU64 | K | ADD, dst, imm=imm)


def rsh_imm(dst: int, imm: int) -> bytes:               # dst >>= imm (logical)
    return _insn(ALU64 | K | RSH, dst, imm=imm)


def load(size: int, dst: int, base: int, off: int) -> bytes:     # dst = *(size *)(base + off)
    return _insn(LDX | size | MEM, dst, base, off)


def store(base: int, off: int, src: int) -> bytes:      # *(u64 *)(base + off) = src
    return _insn(STX | DW | MEM, base, src, off)


def load_map(dst: int, map_fd: int) -> bytes:           # dst = map (two slots; the kernel fills in the map)
    return _insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, imm=map_fd) + _insn(0)


def call(func: int) -> bytes:                           # r0 = helper(r1..r5); clobbers r1-r5
    return _insn(JMP | CALL, imm=func)


def exit_() -> bytes:                                   # return r0
    return _insn(JMP | EXIT)


def jump(op: int, label: str, dst: int = 0, src: int | None = None, imm: int = 0) -> tuple:
    """if (dst op src|imm) goto label; op JA jumps always."""
    return ("jump", op, label, dst, src, imm)


def assemble(items: list) -> bytes:
    where, slot = {}, 0
    for item in items:
        if isinstance(item, str):
            where[item] = slot
        else:
            slot += 1 if isinstance(item, tuple) else len(item) // 8
    out, slot = [], 0
    for item in items:
        if isinstance(item, str):
            continue
        if isinstance(item, tuple):
            _, op, label, dst, src, imm = item
            code = JMP | op | (K if src is None else X)
            item = _insn(code, dst, src or 0, where[label] - slot - 1, imm)
        out.append(item)
        slot += len(item) // 8
    return b"".join(out)


def verdict_program(targets_fd: int, usage_fd: int, ring_fd: int, notify_shift: int) -> bytes:
    """sk_skb stream verdict. Redirects each skb to the egress of the socket stored in `targets`
    under the receiving socket's cookie, adds its length to that direction's `used`, and writes the
    cookie into `ring` each time `used` crosses a multiple of 2**notify_shift."""
    return assemble([
        load(W, R9, R1, 0),                     # r9 = skb->len
        jump(JEQ, "drop", R9, imm=0),           # a bare FIN: TCP has taken it already; redirected it
                                                # would fail and disable the target (EPIPE)
        mov(R6, R1),                            # r6 = skb
        call(FUNC_GET_SOCKET_COOKIE),
        store(FP, -8, R0),                      # key at fp-8: the receiving socket's cookie
        mov(R1, R6), load_map(R2, targets_fd), mov(R3, FP), add_imm(R3, -8), mov_imm(R4, 0),
        call(FUNC_SK_REDIRECT_HASH),            # flags 0: the target's egress; marks the skb if found
        jump(JEQ, "out", R0, imm=SK_DROP),      # no target (pair being removed): the socket keeps it
        load_map(R1, usage_fd), mov(R2, FP), add_imm(R2, -8), call(FUNC_MAP_LOOKUP_ELEM),
        jump(JEQ, "out", R0, imm=0),
        load(DW, R1, R0, 0), mov(R2, R1), add(R2, R9), store(R0, 0, R2),   # used += len (one socket's
                                                # skbs run one at a time, under its lock)
        rsh_imm(R1, notify_shift), rsh_imm(R2, notify_shift),
        jump(JEQ, "out", R1, R2),               # no multiple of the notify step crossed
        load_map(R1, ring_fd), mov(R2, FP), add_imm(R2, -8), mov_imm(R3, 8), mov_imm(R4, 0),
        call(FUNC_RINGBUF_OUTPUT),              # tell the process (ring full: it learns next time)
        "out",
        mov_imm(R0, SK_PASS),
        exit_(),
        "drop",
        mov_imm(R0, SK_DROP),
        exit_(),
    ])


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
        self.ring = _Ring(fds["ring"], RING_SIZE)

    @classmethod
    def load(cls, max_entries: int = 65536, notify: int = NOTIFY, sndbuf: int = SNDBUF) -> "Sockmap":
        """Create the maps (room for max_entries sockets, two per pair), load the program and attach
        it. `notify` (rounded down to a power of 2): redirected bytes per direction between two
        wake-ups, the step at which the caller can watch backlogs. `sndbuf`: the send buffer each
        paired socket gets (0: leave it to autotuning)."""
        shift = max(notify, 4096).bit_length() - 1
        fds: dict[str, int] = {}
        try:
            fds["targets"] = _create_map(BPF_MAP_TYPE_SOCKHASH, 8, 4, max_entries)  # value: socket fd
            fds["sources"] = _create_map(BPF_MAP_TYPE_SOCKHASH, 8, 4, max_entries)
            fds["usage"] = _create_map(BPF_MAP_TYPE_HASH, 8, 8, max_entries, BPF_F_NO_PREALLOC)  # u64 used
            fds["ring"] = _create_map(BPF_MAP_TYPE_RINGBUF, 0, 0, RING_SIZE)
            fds["prog"] = _load_program(verdict_program(fds["targets"], fds["usage"], fds["ring"], shift))
            try:
                bpf(BPF_PROG_ATTACH, struct.pack("<III", fds["sources"], fds["prog"], BPF_SK_SKB_STREAM_VERDICT))
            except OSError as exc:
                raise SockmapUnavailable(f"cannot attach the verdict program: {_why(exc)}") from exc
        except SockmapUnavailable:
            for fd in fds.values():
                os.close(fd)
            raise
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
        key_buf, value = ctypes.c_uint64(key), ctypes.c_uint64()
        bpf(BPF_MAP_LOOKUP_ELEM, struct.pack("<IIQQ", self.fds["usage"], 0, ctypes.addressof(key_buf),
                                             ctypes.addressof(value)))
        return value.value

    def _update(self, name: str, key: int, value: bytes, flags: int) -> None:
        key_buf, value_buf = ctypes.c_uint64(key), ctypes.create_string_buffer(value, len(value))
        bpf(BPF_MAP_UPDATE_ELEM, struct.pack("<IIQQQ", self.fds[name], 0, ctypes.addressof(key_buf),
                                             ctypes.addressof(value_buf), flags))

    def _delete(self, name: str, key: int) -> None:
        key_buf = ctypes.c_uint64(key)
        try:
            bpf(BPF_MAP_DELETE_ELEM, struct.pack("<IIQ", self.fds[name], 0, ctypes.addressof(key_buf)))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise


class _Ring:
    """Reader of a BPF ring buffer of u64 cookies (kernel/bpf/ringbuf.c): a consumer-position page
    the reader writes, then a producer-position page and the data area, mapped twice in a row so a
    record that wraps reads as one piece. Records: u32 length (busy, discard bits), u32, data."""

    def __init__(self, fd: int, size: int):
        page = mmap.PAGESIZE
        self.data = page
        self.mask = size - 1
        self.consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.producer = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)

    def consume(self) -> list[int]:
        pos = struct.unpack_from("<Q", self.consumer, 0)[0]
        end = struct.unpack_from("<Q", self.producer, 0)[0]
        keys = []
        while pos < end:
            at = self.data + (pos & self.mask)
            length = struct.unpack_from("<I", self.producer, at)[0]
            if length & RING_BUSY:          # still being written: next time
                break
            if not length & RING_DISCARD:
                keys.append(struct.unpack_from("<Q", self.producer, at + 8)[0])
            pos += (8 + (length & ~(RING_BUSY | RING_DISCARD)) + 7) & ~7
        struct.pack_into("<Q", self.consumer, 0, pos)
        return keys

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()


def _create_map(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0) -> int:
    try:
        return bpf(BPF_MAP_CREATE, struct.pack("<IIIII", map_type, key_size, value_size, max_entries, flags))
    except OSError as exc:
        raise SockmapUnavailable(f"cannot create a BPF map (type {map_type}): {_why(exc)}") from exc


def _load_program(insns: bytes) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")      # the sockmap helpers are GPL-only
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr = struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_SK_SKB, len(insns) // 8,
                       ctypes.addressof(code), ctypes.addressof(license_),
                       1, LOG_SIZE, ctypes.addressof(log),          # log level 1: the verifier's reasons
                       0, 0, b"epollmux_relay", 0, BPF_SK_SKB_STREAM_VERDICT)
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        text = log.value.decode(errors="replace").strip()
        raise SockmapUnavailable(f"the kernel refused the verdict program: {_why(exc)}", text) from exc


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return f"{exc.strerror} (needs CAP_BPF and CAP_NET_ADMIN, or root)"
    if exc.errno == errno.EINVAL:
        return f"{exc.strerror} (kernel without sockmap or sk_skb support?)"
    return exc.strerror or str(exc)
