"""Where relayed bytes wait between two sockets: kernel pipes (splice) or user buffers (copy).

Owns: `PipeChannel` (a pipe, moved with os.splice, the payload never enters Python),
`BufferChannel` (a reused bytearray, moved with readv/write) and `ChannelPool`, which lends them
out only while bytes are in flight, caps the number of pipes and falls back to buffers beyond it.
A buffer takes the pipe size, within `BUFFER_MIN`..`BUFFER_MAX` (a pipe's capacity costs nothing until
bytes fill it; a buffer is resident, and the TLS relay decrypts into it). Idle channels kept for reuse are bounded in
bytes (`KEEP_IDLE_BYTES`), not only in number: an idle pipe's capacity counts against an unprivileged
user's pipe-user-pages-soft (64 MiB by default; past it new pipes get 2 pages).
Rules (HAProxy's pipe pool): get, put, kill; a channel that still holds bytes is never put back.
Channels move bytes between endpoints (see endpoints.py): pipes use their fds, buffers their
readinto/write. Must not know about connections, the reactor or protocols.
Must not import what relay/ must not (README "Architecture").
"""

from __future__ import annotations

import fcntl
import os

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
BUFFER_MAX = 256 << 10       # bytes per copy buffer at most, whatever the pipe size
BUFFER_MIN = 32 << 10        # and at least: what relay.direction's no-Direction path reads at once (QUICK), so the
#                              bytes a destination refused always fit in the buffer that holds them (Direction.hold)
KEEP_IDLE_BYTES = 16 << 20   # capacity of the idle channels a pool keeps, per kind (64 at 256 KiB, 16 at 1 MiB)


class PipeChannel:
    __slots__ = ("r", "w", "size")
    zero_copy = True

    def __init__(self, size: int):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.size = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, size)
        except OSError:   # over /proc/sys/fs/pipe-max-size for this user: keep the default
            self.size = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)

    def fill(self, src) -> int:
        """Move up to `size` bytes from the src endpoint into the (empty) pipe; 0 at EOF; BlockingIOError if none."""
        return os.splice(src.fd, self.w, self.size, flags=SPLICE_FLAGS)

    def drain(self, dst, pending: int) -> int:
        return os.splice(self.r, dst.fd, pending, flags=SPLICE_FLAGS)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class BufferChannel:
    __slots__ = ("buf", "view", "start", "size")
    zero_copy = False

    def __init__(self, size: int):
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.size = size

    def fill(self, src) -> int:
        self.start = 0
        return src.readinto(self.view)

    def drain(self, dst, pending: int) -> int:
        n = dst.write(self.view[self.start:self.start + pending])
        self.start += n
        return n

    def close(self) -> None:
        self.view.release()


class ChannelPool:
    """Lends channels; keeps a few idle ones for reuse; never more than `max_pipes` pipes alive."""

    def __init__(self, kind: str, size: int, max_pipes: int, keep_idle: int | None = None):
        """kind: splice, copy, or adaptive (pipes only for the directions that stream, see direction.py)."""
        self.adaptive = kind == "adaptive"
        self.splice = kind in ("splice", "adaptive")
        self.size = size
        self.buffer_size = max(BUFFER_MIN, min(size, BUFFER_MAX))
        self.max_pipes = max_pipes if self.splice else 0
        self.keep_idle = keep_idle if keep_idle is not None else max(1, min(64, KEEP_IDLE_BYTES // size))
        self.keep_idle_buffers = keep_idle if keep_idle is not None else min(64, KEEP_IDLE_BYTES // self.buffer_size)
        self._idle_pipes: list[PipeChannel] = []
        self._idle_buffers: list[BufferChannel] = []
        self.pipes = 0          # pipes alive (lent or idle)
        self.lent = 0           # channels lent out now
        self.fallbacks = 0      # times a buffer stood in for a pipe
        self.spliced = self.copied = 0      # bytes the directions moved through pipes, through buffers
        self.to_splice = self.to_copy = 0   # adaptive switches of a direction (relay/direction.py)

    @property
    def idle_pipes(self) -> int:
        """Pipes kept for reuse, holding no bytes."""
        return len(self._idle_pipes)

    def get(self, zero_copy: bool = True) -> PipeChannel | BufferChannel:
        """A channel for one direction; zero_copy=False when an end is not a plain socket (TLS)."""
        self.lent += 1
        if not zero_copy:
            return self._idle_buffers.pop() if self._idle_buffers else BufferChannel(self.buffer_size)
        if self._idle_pipes:
            return self._idle_pipes.pop()
        if self.pipes < self.max_pipes:
            try:
                pipe = PipeChannel(self.size)
            except OSError:        # EMFILE and friends: a buffer does the job without an fd
                self.fallbacks += 1
            else:
                self.pipes += 1
                return pipe
        elif self.splice:
            self.fallbacks += 1
        if self._idle_buffers:
            return self._idle_buffers.pop()
        return BufferChannel(self.buffer_size)

    def put(self, channel) -> None:
        """Return an empty channel."""
        self.lent -= 1
        if isinstance(channel, PipeChannel):
            if len(self._idle_pipes) < self.keep_idle:
                self._idle_pipes.append(channel)
            else:
                self._kill_pipe(channel)
        elif len(self._idle_buffers) < self.keep_idle_buffers:
            self._idle_buffers.append(channel)

    def kill(self, channel) -> None:
        """Destroy a channel that may still hold bytes."""
        self.lent -= 1
        if isinstance(channel, PipeChannel):
            self._kill_pipe(channel)
        else:
            channel.close()

    def _kill_pipe(self, pipe: PipeChannel) -> None:
        pipe.close()
        self.pipes -= 1

    def close(self) -> None:
        for pipe in self._idle_pipes:
            self._kill_pipe(pipe)
        self._idle_pipes.clear()
        self._idle_buffers.clear()
