"""Sans-I/O TLS terminator: one `ssl.SSLObject` over two `ssl.MemoryBIO`s per connection.

Owns: the TLS state machine of one connection (HANDSHAKING -> OPEN -> CLOSING -> CLOSED), the bounds on
ciphertext buffered in each direction, the classification of every `ssl` error into a short close reason,
and the per-connection facts used for logs and PROXY headers (version, cipher, ALPN, SNI, peer cert).

Must not import: socket, select, the reactor, the connection, the config module, or `contexts.py`. It takes
bytes and returns bytes and reasons; the caller moves bytes to and from sockets and arms deadlines.

Contract for the caller (the connection):

* Construct with a context from `contexts.py`. The engine starts in HANDSHAKING: arm the handshake deadline
  (its expiry is the caller's reason `tls-handshake-timeout`). `on_state_change(old, new)` is called on
  every transition; it must not call back into the engine.
* Socket readable: read at most `ciphertext_room()` bytes, `feed_ciphertext()` them (`feed_eof()` on a
  TCP EOF). When `wants_more_ciphertext()` is False, stop reading the socket until plaintext is consumed.
* While HANDSHAKING call `step()`: None (go on), `Event.HANDSHAKE_DONE` (once), or a `CloseReason`.
* While OPEN or CLOSING call `read_plaintext()`: bytes (b"" = nothing yet) or a `CloseReason`.
  `CloseReason.CLOSE_NOTIFY` in OPEN is a half-close by the peer: pass EOF on, keep writing, then `close()`.
* `write_plaintext()` accepts only what fits under the outbound cap and returns the count accepted.
* After every call, send `take_ciphertext()` while `pending_ciphertext()` > 0 (alerts too: after a failure,
  flush best-effort, then close the socket). CLOSED with nothing pending means the socket can be closed.
  `outgoing.pending` is the same count without a Python call, for the per-record path.
* Calls are cheap when there is nothing to do: once OpenSSL has consumed all the ciphertext fed and asked
  for more, `step()` and the reads return at once without calling it, until more ciphertext (or EOF) comes.
* `close()` sends close_notify (OPEN -> CLOSING, or -> CLOSED if the peer's already came). In CLOSING keep
  calling `read_plaintext()` (forward or drop the data) until it returns a reason. `close()` during the
  handshake goes straight to CLOSED with `reason` None: the caller owns that reason (e.g. a timeout).

Close reasons (`CloseReason`, a str): tls-handshake-failed, tls-alert, tls-truncated, tls-close-notify,
tls-not-tls, tls-protocol-error, tls-renegotiation. `detail` holds OpenSSL's reason in lower case (e.g. "unsupported_protocol",
"tlsv1_alert_unknown_ca") or the certificate verify message, for the log line. `tls-handshake-timeout` is the
caller's, from the deadline it arms on entering HANDSHAKING. CLOSING has no deadline: it is TLS's half-close
(RFC 8446 6.1: the peer may go on sending after our close_notify), so it lasts as long as the other direction
does, bounded as every relayed connection is (idle_timeout, TCP keepalive, a stop's drain_timeout), as
tests/e2e/test_tls_shutdown.py checks with a client that never answers.
"""

from __future__ import annotations

import enum
import ssl
from typing import Callable

from epollmux.reasons import Reason
from epollmux.states import TransitionError

DEFAULT_MAX_INBOUND = 64 * 1024
DEFAULT_MAX_OUTBOUND = 64 * 1024
DEFAULT_READ_SIZE = 64 * 1024
MAX_RECORD_WIRE = 5 + 2 ** 14 + 2048   # header + largest TLS 1.2 ciphertext (RFC 5246 6.2.3)
_MAX_RECORD = 16 * 1024 + 256     # plaintext OpenSSL may hold decrypted but not yet returned

TLS_HANDSHAKE = 0x16
TLS_ALERT = 0x15
_ALERT_REASON_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")
_SNI_ATTRIBUTE = "_epollmux_sni"


class TLSState(enum.StrEnum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


NEXT: dict[TLSState, tuple[TLSState, ...]] = {       # the idiom of epollmux/states.py
    TLSState.HANDSHAKING: (TLSState.OPEN, TLSState.CLOSED),
    TLSState.OPEN: (TLSState.CLOSING, TLSState.CLOSED),
    TLSState.CLOSING: (TLSState.CLOSED,),
    TLSState.CLOSED: (),
}


class Event(enum.Enum):
    HANDSHAKE_DONE = "handshake-done"


class CloseReason(str, enum.Enum):
    """Why the TLS layer ended; its values are the client-side members of reasons.Reason (a backend
    leg's reason is the "backend-" one)."""

    HANDSHAKE_FAILED = Reason.TLS_HANDSHAKE_FAILED.value   # local refusal: version, cipher, client cert, bad record...
    ALERT = Reason.TLS_ALERT.value                         # the peer sent a fatal alert (detail names it)
    TRUNCATED = Reason.TLS_TRUNCATED.value                 # TCP EOF without close_notify, in any state
    CLOSE_NOTIFY = Reason.TLS_CLOSE_NOTIFY.value           # clean end of the peer's direction
    NOT_TLS = Reason.TLS_NOT_TLS.value                     # the peer's first byte cannot start a TLS record
    PROTOCOL_ERROR = Reason.TLS_PROTOCOL_ERROR.value       # a bad record or message after the handshake
    RENEGOTIATION = Reason.TLS_RENEGOTIATION.value         # the peer tried to renegotiate (TLS 1.2): refused

    def __str__(self) -> str:
        return self.value

    def on(self, prefix: str) -> Reason:
        """The close reason of a leg: prefix "" for the client's, "backend-" for the backend's."""
        return Reason(prefix + self.value)


class TLSStateError(TransitionError):
    """A caller bug: a transition or an operation that the current state does not allow."""


def record_sni(ssl_object: ssl.SSLObject, server_name: str | None, route: str | None) -> None:
    """For a context's `sni_callback`: remember the name the client asked for and the route chosen."""
    setattr(ssl_object, _SNI_ATTRIBUTE, (server_name, route))


def classify_ssl_error(exc: ssl.SSLError, handshaking: bool) -> CloseReason:
    """The one mapping from `ssl` exceptions to close reasons."""
    if isinstance(exc, ssl.SSLZeroReturnError):
        return CloseReason.CLOSE_NOTIFY
    if isinstance(exc, ssl.SSLEOFError):
        return CloseReason.TRUNCATED
    if (getattr(exc, "reason", None) or "").startswith(_ALERT_REASON_PREFIXES):
        return CloseReason.ALERT
    return CloseReason.HANDSHAKE_FAILED if handshaking else CloseReason.PROTOCOL_ERROR


def _error_detail(exc: ssl.SSLError) -> str:
    verify_message = getattr(exc, "verify_message", None)
    if verify_message:
        return f"certificate verify failed: {verify_message}"
    reason = getattr(exc, "reason", None)
    return reason.lower() if reason else type(exc).__name__


class TLSEngine:
    """One TLS connection end, server side by default; see the module docstring for the contract."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool = True,
                 server_hostname: str | None = None,
                 max_inbound: int = DEFAULT_MAX_INBOUND, max_outbound: int = DEFAULT_MAX_OUTBOUND,
                 on_state_change: Callable[[TLSState, TLSState], None] | None = None) -> None:
        if max_inbound < MAX_RECORD_WIRE:
            # A record is decrypted only once whole: a smaller cap could never make progress.
            raise ValueError(f"max_inbound must be at least one TLS record ({MAX_RECORD_WIRE} bytes)")
        self._incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()   # ciphertext to send: read `outgoing.pending`, take with take_ciphertext()
        self._sslobj = context.wrap_bio(self._incoming, self.outgoing, server_side=server_side,
                                        server_hostname=server_hostname)
        # ssl.SSLObject's read/write/do_handshake only pass the call on to the C object it wraps: call that one
        # (one Python frame less per record); the same methods, exceptions and results
        self._c = getattr(self._sslobj, "_sslobj", self._sslobj)
        self._server_side = server_side
        self._max_inbound = max_inbound
        self._max_outbound = max_outbound
        self._on_state_change = on_state_change
        self._first_byte_seen = False
        self._handshake_done = False
        self._not_tls = False
        self._renegotiable = False     # open in TLS 1.2 or older: a read that makes output is a refused renegotiation
        # OpenSSL consumed all the ciphertext it was given and wants more: until feed_ciphertext() or
        # feed_eof(), neither do_handshake nor read can make progress, so neither is called. A server
        # has nothing to say before the ClientHello: it starts out waiting. Read-only outside this class.
        self.starved = server_side
        self._drained = b""            # plaintext read out of the BIO before sending close_notify
        self._deferred: CloseReason | None = None   # an end seen while returning data
        self.state = TLSState.HANDSHAKING
        self.reason: CloseReason | None = None
        self.detail: str | None = None
        self.peer_closed = False

    # -- state ---------------------------------------------------------------------------------------

    def _set_state(self, new: TLSState) -> None:
        old = self.state
        if new not in NEXT[old]:
            raise TLSStateError.of("TLS", old, new)
        self.state = new
        if self._on_state_change is not None:
            self._on_state_change(old, new)

    def _end(self, reason: CloseReason | None, detail: str | None = None) -> CloseReason | None:
        if self.state is not TLSState.CLOSED:
            self.reason, self.detail = reason, detail
            self._set_state(TLSState.CLOSED)
        return self.reason

    def _fail(self, exc: ssl.SSLError) -> CloseReason:
        reason = classify_ssl_error(exc, self.state is TLSState.HANDSHAKING)
        return self._end(reason, _error_detail(exc))

    # -- ciphertext in -------------------------------------------------------------------------------

    def ciphertext_room(self) -> int:
        """How many more ciphertext bytes `feed_ciphertext()` accepts now."""
        if self.state is TLSState.CLOSED:
            return 0
        return self._max_inbound - self._incoming.pending     # never negative: feed_ciphertext() checks

    def wants_more_ciphertext(self) -> bool:
        return self.ciphertext_room() > 0

    def feed_ciphertext(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes received from the peer. Raises BufferError beyond `ciphertext_room()`; dropped once CLOSED."""
        if not data or self.state is TLSState.CLOSED:
            return
        if len(data) > self._max_inbound - self._incoming.pending:
            raise BufferError(f"{len(data)} ciphertext bytes exceed the room of {self.ciphertext_room()}")
        if not self._first_byte_seen:
            self._first_byte_seen = True
            if not self._can_start_tls(data[0]):
                self._not_tls = True
                return
        self._incoming.write(data)
        self.starved = False

    def _can_start_tls(self, first: int) -> bool:
        # A client always opens with a handshake record; a server may answer with an alert.
        return first == TLS_HANDSHAKE or (not self._server_side and first == TLS_ALERT)

    def feed_eof(self) -> None:
        """The peer closed its TCP direction."""
        if not self._incoming.eof:
            self._incoming.write_eof()
            self.starved = False

    # -- ciphertext out ------------------------------------------------------------------------------

    def pending_ciphertext(self) -> int:
        return self.outgoing.pending

    def take_ciphertext(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all when negative) to send to the peer."""
        return self.outgoing.read(size)

    # -- handshake -----------------------------------------------------------------------------------

    def step(self) -> Event | CloseReason | None:
        """Drive the handshake: None = need more bytes, HANDSHAKE_DONE once, or a close reason."""
        if self.state is TLSState.CLOSED:
            return self.reason
        if self.state is not TLSState.HANDSHAKING:
            return None
        if self._not_tls:
            return self._end(CloseReason.NOT_TLS, "first byte is not a TLS record")
        if self.starved:
            return None
        try:
            self._c.do_handshake()
        except ssl.SSLWantReadError:
            if self._incoming.eof:
                return self._end(CloseReason.TRUNCATED, "eof during handshake")
            self.starved = True
            return None
        except ssl.SSLError as exc:
            return self._fail(exc)
        self._handshake_done = True
        self._renegotiable = self._sslobj.version() != "TLSv1.3"
        # A server's do_handshake has sent everything (TLS 1.3 tickets too); only the peer's data can follow.
        self.starved = not self._incoming.pending and not self._incoming.eof
        self._set_state(TLSState.OPEN)
        return Event.HANDSHAKE_DONE

    # -- plaintext -----------------------------------------------------------------------------------

    def read_plaintext(self, size: int = DEFAULT_READ_SIZE) -> bytes | CloseReason:
        """Decrypted bytes (b"" = nothing yet), or a CloseReason when the peer's direction has ended."""
        if self._drained:
            data, self._drained = self._drained[:size], self._drained[size:]
            return data
        if self.state is TLSState.CLOSED:
            if self.reason is None:
                raise TLSStateError("read after close() during the handshake")
            return self.reason
        if self.state is TLSState.HANDSHAKING:
            return b""
        if self._deferred is not None:
            return self._finish_read(self._deferred)
        if self.starved:
            return b""
        return self._read_records(size)

    def read_into(self, view: memoryview) -> int | CloseReason:
        """read_plaintext() into the caller's buffer, with no allocation: the count (0 = nothing yet)."""
        if self._drained or self._deferred is not None or self.state not in (TLSState.OPEN, TLSState.CLOSING):
            data = self.read_plaintext(len(view))
            if isinstance(data, CloseReason):
                return data
            view[:len(data)] = data
            return len(data)
        if self.starved:
            return 0
        got = self._decrypt(view)
        return got if got else self._end_of_read(0)

    def _read_records(self, size: int) -> bytes | CloseReason:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = self._decrypt(view)
        view.release()
        return bytes(buffer[:got]) if got else self._end_of_read(b"")

    def _decrypt(self, view: memoryview) -> int:
        """Decrypt complete records into view; how the stream ended, if it did, waits in _deferred.

        A read that returns less than asked for has emptied OpenSSL's plaintext; with no ciphertext left
        in the BIO either, the next read could only raise SSLWantReadError: stop (starved) instead.
        """
        size = len(view)
        got = 0
        end: CloseReason | None = None
        incoming = self._incoming
        before = self.outgoing.pending if self._renegotiable else -1
        while True:
            try:
                count = self._c.read(size - got, view[got:] if got else view)
            except ssl.SSLWantReadError:
                if incoming.eof:
                    end = CloseReason.TRUNCATED
                else:
                    self.starved = True
                break
            except ssl.SSLError as exc:
                end = classify_ssl_error(exc, handshaking=False)
                self.detail = _error_detail(exc)
                break
            if count == 0:
                end = CloseReason.CLOSE_NOTIFY
                break
            got += count
            if got == size:
                break
            if not incoming.pending and not incoming.eof:
                self.starved = True
                break
        if before >= 0 and end is None and self.outgoing.pending > before:
            # TLS 1.2 answers nothing to data: output made by a read is the refusal of a renegotiation
            # (the no_renegotiation alert; OP_NO_RENEGOTIATION), which OpenSSL would otherwise repeat forever
            end, self.detail = CloseReason.RENEGOTIATION, "renegotiation refused"
        self._deferred = end
        return got

    def _end_of_read(self, nothing):
        """No bytes were decrypted: the end of the stream if it came, else `nothing` (wait for more)."""
        return self._finish_read(self._deferred) if self._deferred is not None else nothing

    def _finish_read(self, end: CloseReason) -> CloseReason:
        self._deferred = None
        if end is CloseReason.CLOSE_NOTIFY and self.state is TLSState.OPEN:
            self.peer_closed = True
            return end
        return self._end(end, self.detail)

    def write_plaintext(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt as much of `data` as the outbound cap allows; returns the count accepted (0 = full).

        Returns 0 while HANDSHAKING; raises TLSStateError after `close()`. Ciphertext pending never exceeds
        the cap by more than one write's record overhead.
        """
        if self.state is TLSState.HANDSHAKING:
            return 0
        if self.state is not TLSState.OPEN:
            raise TLSStateError(f"write in state {self.state.name}")
        room = self._max_outbound - self.outgoing.pending
        if room <= 0 or not data:
            return 0
        chunk = data if len(data) <= room else memoryview(data)[:room]
        try:
            return self._c.write(chunk)
        except ssl.SSLError as exc:
            self._fail(exc)
            return 0
        finally:
            if chunk is not data:
                chunk.release()

    # -- close ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Send close_notify. During the handshake there is nothing to say: go straight to CLOSED."""
        if self.state is TLSState.HANDSHAKING:
            self._end(None, "closed during handshake")
            return
        if self.state is not TLSState.OPEN:
            return
        if not self._drain_before_close():
            return
        try:
            self._sslobj.unwrap()
        except ssl.SSLWantReadError:
            self._set_state(TLSState.CLOSING)
            return
        except ssl.SSLError as exc:
            self._fail(exc)
            return
        self._end(CloseReason.CLOSE_NOTIFY)

    def _drain_before_close(self) -> bool:
        # OpenSSL's second SSL_shutdown() (CPython calls it twice) fails on unread application data
        # (APPLICATION_DATA_AFTER_CLOSE_NOTIFY) and discards it: read complete records out first.
        # Bounded: the inbound BIO never holds more than max_inbound bytes. Starved: nothing to read.
        if self.starved:
            return True
        result = self._read_records(self._max_inbound + _MAX_RECORD)
        if isinstance(result, bytes):
            self._drained += result
            result, self._deferred = self._deferred, None
        if result is None:
            return True
        if result is CloseReason.CLOSE_NOTIFY:
            self.peer_closed = True
            return True
        self._end(result, self.detail)
        return False

    # -- facts ---------------------------------------------------------------------------------------

    @property
    def sni(self) -> str | None:
        """The server name the client sent, as recorded by the context's sni_callback."""
        return getattr(self._sslobj, _SNI_ATTRIBUTE, (None, None))[0]

    @property
    def route(self) -> str | None:
        """The route the sni_callback chose (listener contexts from `contexts.py`), else None."""
        return getattr(self._sslobj, _SNI_ATTRIBUTE, (None, None))[1]

    @property
    def context(self) -> ssl.SSLContext:
        """The context in use: after an SNI switch, the chosen route's."""
        return self._sslobj.context

    def version(self) -> str | None:
        return self._sslobj.version()

    def cipher(self) -> str | None:
        cipher = self._sslobj.cipher()
        return cipher[0] if cipher else None

    def alpn(self) -> str | None:
        return self._sslobj.selected_alpn_protocol()

    def session_reused(self) -> bool:
        return self._handshake_done and self._sslobj.session_reused

    def peer_cert_der(self) -> bytes | None:
        """The peer's certificate (DER) once the handshake is done, whether or not it was verified."""
        return self._sslobj.getpeercert(True) if self._handshake_done else None

    def peer_cn(self) -> str | None:
        """commonName of a verified peer certificate (ssl decodes only verified certificates)."""
        if not self._handshake_done:
            return None
        for rdn in (self._sslobj.getpeercert() or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None

    def peer_verified(self) -> bool:
        """True when the context required a peer certificate and the handshake accepted one."""
        return (self._handshake_done and self.context.verify_mode == ssl.CERT_REQUIRED
                and self._sslobj.getpeercert(True) is not None)
