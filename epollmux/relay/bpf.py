"""The bpf(2) system call without a library: its ABI, a small assembler, the sk_skb verdict program
that relays a pair's bytes, and the maps it uses.

Owns: calling bpf() through ctypes, assembling BPF instructions (labels resolved into jump
offsets), the verdict program (see `verdict_program` and the "Kernel relay" section of the README),
creating the four maps and loading and attaching the program (`load_maps`, raising
`SockmapUnavailable` with the verifier log), the map element operations on u64 keys, and the
reader of the ring buffer the program writes to.

Must not import the reactor, the configuration, the relay or anything that knows a protocol or a
socket pair (that is `relay/sockmap.py`).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct

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
RING_SIZE = 256 * 1024             # notifications, 16 bytes each (header + cookie); power of 2 pages
RING_BUSY, RING_DISCARD = 1 << 31, 1 << 30



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


# --- the maps and the program -------------------------------------------------------------------

def load_maps(max_entries: int, notify_shift: int) -> dict[str, int]:
    """Create the maps (room for max_entries sockets), load the verdict program and attach it to
    `sources`. Returns the fds by name: targets, sources, usage, ring, prog. Raises
    SockmapUnavailable, leaving nothing open."""
    fds: dict[str, int] = {}
    try:
        fds["targets"] = _create_map(BPF_MAP_TYPE_SOCKHASH, 8, 4, max_entries)  # value: socket fd
        fds["sources"] = _create_map(BPF_MAP_TYPE_SOCKHASH, 8, 4, max_entries)
        fds["usage"] = _create_map(BPF_MAP_TYPE_HASH, 8, 8, max_entries, BPF_F_NO_PREALLOC)  # u64 used
        fds["ring"] = _create_map(BPF_MAP_TYPE_RINGBUF, 0, 0, RING_SIZE)
        fds["prog"] = _load_program(verdict_program(fds["targets"], fds["usage"], fds["ring"], notify_shift))
        try:
            bpf(BPF_PROG_ATTACH, struct.pack("<III", fds["sources"], fds["prog"], BPF_SK_SKB_STREAM_VERDICT))
        except OSError as exc:
            raise SockmapUnavailable(f"cannot attach the verdict program: {_why(exc)}") from exc
    except SockmapUnavailable:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def lookup_u64(map_fd: int, key: int) -> int:
    key_buf, value = ctypes.c_uint64(key), ctypes.c_uint64()
    bpf(BPF_MAP_LOOKUP_ELEM, struct.pack("<IIQQ", map_fd, 0, ctypes.addressof(key_buf), ctypes.addressof(value)))
    return value.value


def update(map_fd: int, key: int, value: bytes, flags: int) -> None:
    key_buf, value_buf = ctypes.c_uint64(key), ctypes.create_string_buffer(value, len(value))
    bpf(BPF_MAP_UPDATE_ELEM, struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key_buf),
                                         ctypes.addressof(value_buf), flags))


def delete(map_fd: int, key: int) -> None:
    """Remove key; a key that is not there is no error."""
    key_buf = ctypes.c_uint64(key)
    try:
        bpf(BPF_MAP_DELETE_ELEM, struct.pack("<IIQ", map_fd, 0, ctypes.addressof(key_buf)))
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


class Ring:
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
