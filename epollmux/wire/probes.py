"""Protocol probes: pure functions of the client's first bytes, and the one table that names them.

Owns: every probe's byte-level rule, the PROBES registry (probe name -> function + accepted route option
keys) and prepare_options(), which turns raw config values into what the probes take.  sslh's probe rules
are the reference; where epollmux departs from them it says so below and in the README's "Coming from sslh".

Must not import: socket, select, the reactor, connection or config modules.  No I/O, no state.

A probe answers MATCH, NEXT (these bytes cannot begin this protocol, whatever follows) or AGAIN (they still
can; wait).  Contract kept by every probe except `regex`:
- b"" gives AGAIN (`any` excepted: it always MATCHes);
- the verdict is a function of the bytes only, and once a prefix gives MATCH or NEXT every longer input
  with that prefix gives the same verdict, so chunking never changes the outcome.
`regex` follows sslh (unanchored search, NEXT when no pattern matches): a longer input may match where a
shorter one did not, so routes use `min_length` to wait.  It gives AGAIN on b"" and below `min_length`.

Globs (`sni`, `alpn`, `host`) are fnmatch-style: `*` matches any run of characters *including dots*
(as in sslh, so `*.example.org` also matches `a.b.example.org`), `?` one character, `[...]` a set.
`sni` and `host` are case-insensitive (both sides lowercased); `alpn` is case-sensitive (ALPN ids are
opaque byte strings).
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from epollmux.wire.clienthello import HelloResult, HelloStatus, parse_client_hello


class Verdict(enum.Enum):
    MATCH = "match"
    NEXT = "next"
    AGAIN = "again"


@dataclass(frozen=True)
class ProbeSpec:
    func: Callable[[bytes, Mapping[str, object]], Verdict]
    keys: frozenset[str]              # route option keys this probe accepts


# ---------------------------------------------------------------- byte shapes
# A shape is a sequence of byte sets, one per position.  Matching a family of shapes against a prefix is
# what makes AGAIN exact: AGAIN while some shape is still possible, NEXT when none is.  A family is indexed
# by first byte, so bytes of another protocol (a TLS record before the http probe) cost one lookup.

Shape = tuple[frozenset[int], ...]
Family = tuple[tuple[Shape, ...], ...]      # [b]: the shapes whose first cell allows byte b; [256]: all
DIGITS = frozenset(b"0123456789")


def literal(text: bytes) -> Shape:
    return tuple(frozenset((b,)) for b in text)


def _shape_state(data: bytes, shape: Shape) -> Verdict:
    """MATCH if data starts with the shape, NEXT if it contradicts it, AGAIN if it is a proper prefix."""
    for byte, allowed in zip(data, shape):
        if byte not in allowed:
            return Verdict.NEXT
    return Verdict.MATCH if len(data) >= len(shape) else Verdict.AGAIN


def family(*shapes: Shape) -> Family:
    return tuple(tuple(s for s in shapes if b in s[0]) for b in range(256)) + (shapes,)


def match_shapes(data: bytes, shapes: Family) -> Verdict:
    """MATCH if any shape matches, else AGAIN if any is still possible, else NEXT."""
    verdict = Verdict.NEXT
    for shape in shapes[data[0] if data else 256]:
        state = _shape_state(data, shape)
        if state is Verdict.MATCH:
            return state
        if state is Verdict.AGAIN:
            verdict = state
    return verdict


def _placed(parts: Mapping[int, bytes]) -> Shape:
    """A shape with literal bytes at fixed offsets and any byte in between."""
    anything = frozenset(range(256))
    end = max(off + len(text) for off, text in parts.items())
    cells = [anything] * end
    for off, text in parts.items():
        cells[off:off + len(text)] = literal(text)
    return tuple(cells)


def glob_any(name: str, patterns: Sequence[str]) -> bool:
    """Case-sensitive fnmatch of one name against any pattern (callers lowercase when they need to)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# ---------------------------------------------------------------- simple prefix probes
SSH_SHAPES = family(literal(b"SSH-"))
TINC_SHAPES = family(literal(b"0 "))


def probe_ssh(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """sslh: MATCH on a leading `SSH-`; NEXT as soon as the bytes are not a prefix of it."""
    return match_shapes(data, SSH_SHAPES)


def probe_tinc(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """sslh: tinc's ID request starts with `0 ` (request number 0 then a space)."""
    return match_shapes(data, TINC_SHAPES)


def probe_any(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """Always MATCH, even before any byte (a first route `any` is a server-speaks-first listener)."""
    return Verdict.MATCH


# ---------------------------------------------------------------- tls
def probe_tls(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """MATCH once the whole ClientHello parsed OK (not at the first record header: a hello that turns
    out malformed goes to the next route), and its SNI / ALPN fit the route's globs.

    `sni`: the first host_name must match a glob (absent SNI: NEXT).  `alpn`: some offered protocol must
    match a glob (no ALPN: NEXT).  Both set: both must hold.  Under ECH the SNI seen is the outer
    public_name.  AGAIN while the hello is incomplete, across TCP segments and handshake records.
    """
    return hello_verdict(parse_client_hello(data), opts)


def hello_verdict(hello: HelloResult, opts: Mapping[str, object]) -> Verdict:
    """The tls probe's rule on a parsed ClientHello (also the UDP `dtls` and `quic` probes'): NEED_MORE ->
    AGAIN, not OK -> NEXT, then the `sni` and `alpn` globs (absent SNI / ALPN with a glob set: NEXT)."""
    if hello.status is HelloStatus.NEED_MORE:
        return Verdict.AGAIN
    if hello.status is not HelloStatus.OK:
        return Verdict.NEXT
    sni_globs = opts.get("sni")
    if sni_globs is not None and (hello.sni is None or not glob_any(hello.sni, sni_globs)):
        return Verdict.NEXT
    alpn_globs = opts.get("alpn")
    if alpn_globs is not None and not any(glob_any(p, alpn_globs) for p in hello.alpn):
        return Verdict.NEXT
    return Verdict.MATCH


# ---------------------------------------------------------------- http
HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PATCH")
H2_PREFACE_LINE = b"PRI * HTTP/2.0\r\n"
HTTP1_SHAPES = family(*(literal(m + b" ") for m in HTTP_METHODS))
HTTP_SHAPES = family(*(literal(m + b" ") for m in HTTP_METHODS), literal(H2_PREFACE_LINE))
HEAD_END = b"\r\n\r\n"


def probe_http(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """HTTP/1.x by method + space, HTTP/2 prior knowledge by the `PRI * HTTP/2.0` CRLF line.

    Unlike sslh there is no MATCH on `HTTP` anywhere in the bytes and AGAIN lasts only while the bytes are
    a prefix of a method + space or of the preface line; PATCH is known.
    `host`: MATCH only when the request head (up to CRLFCRLF; AGAIN before) has exactly one Host header
    whose value, port stripped and lowercased, fits a glob.  Absent, repeated or unmatched Host: NEXT.
    With `host` set an h2 prior-knowledge client gives NEXT: its host (:authority) sits in a
    HPACK-compressed HEADERS frame this probe does not decode.
    """
    host_globs = opts.get("host")
    if host_globs is None:
        return match_shapes(data, HTTP_SHAPES)
    start = match_shapes(data, HTTP1_SHAPES)
    if start is not Verdict.MATCH:
        return start
    end = data.find(HEAD_END)
    if end < 0:
        return Verdict.AGAIN
    host = _host_header(data[:end])
    return Verdict.MATCH if host is not None and glob_any(host, host_globs) else Verdict.NEXT


def request_host(data: bytes) -> str | None:
    """The Host of an HTTP/1.x request head in data (for logs), or None."""
    end = data.find(HEAD_END)
    if end < 0 or match_shapes(data, HTTP1_SHAPES) is not Verdict.MATCH:
        return None
    return _host_header(data[:end])


def _host_header(head: bytes) -> str | None:
    """The single Host value of a request head, port stripped, lowercased; None if absent or repeated."""
    values = []
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"host":
            values.append(value.strip(b" \t"))
    if len(values) != 1 or not values[0].isascii():
        return None
    return _strip_port(values[0].decode("ascii").lower())


def _strip_port(host: str) -> str:
    if host.startswith("["):                     # [v6]:port
        close = host.find("]")
        return host[:close + 1] if close > 0 else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


# ---------------------------------------------------------------- openvpn
OPENVPN_HARD_RESET_CLIENT = frozenset((1, 7, 10))     # P_CONTROL_HARD_RESET_CLIENT_V1, _V2, _V3
OPENVPN_MIN_LEN = 14        # opcode + session id (8) + ack count + packet id (4): the smallest reset
OPENVPN_MAX_LEN = 2048      # tls-crypt-v2 resets carry a wrapped key (<= 1024 B); room to spare


def probe_openvpn(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """OpenVPN over TCP: a 2-byte big-endian packet length in [OPENVPN_MIN_LEN, OPENVPN_MAX_LEN], then
    the opcode byte of a client hard reset (opcode = byte >> 3 in {1, 7, 10}, key id = byte & 7 == 0).

    Unlike sslh the packet need not be complete nor alone in the buffer (a partial packet is not NEXT),
    and the opcode keeps arbitrary bytes such as `\\0\\0` from matching.  Each byte is checked as soon as
    it arrives: the length's high byte alone can already rule OpenVPN out.
    """
    if len(data) >= 1 and data[0] > OPENVPN_MAX_LEN >> 8:
        return Verdict.NEXT
    if len(data) >= 2 and not OPENVPN_MIN_LEN <= int.from_bytes(data[:2], "big") <= OPENVPN_MAX_LEN:
        return Verdict.NEXT
    if len(data) < 3:
        return Verdict.AGAIN
    opcode, key_id = data[2] >> 3, data[2] & 7
    return Verdict.MATCH if opcode in OPENVPN_HARD_RESET_CLIENT and key_id == 0 else Verdict.NEXT


# ---------------------------------------------------------------- xmpp
XMPP_SHAPES = family(literal(b"<?xml"), literal(b"<stream:stream"))
XMPP_WINDOW = 1024          # bytes searched for the stream header


def probe_xmpp(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """An XMPP client opens with `<?xml` or directly `<stream:stream` (NEXT at once otherwise; no leading
    whitespace or BOM accepted).  Then, as sslh, MATCH when `jabber` (xmlns='jabber:client') shows up --
    searched in the first XMPP_WINDOW bytes, and only up to the `>` closing the `<stream:stream` tag once
    that is seen.  NEXT when the tag closed without it or the window is full; AGAIN before.
    """
    gate = match_shapes(data, XMPP_SHAPES)
    if gate is not Verdict.MATCH:
        return gate
    window = data[:XMPP_WINDOW]
    scope, closed = window, False
    start = window.find(b"<stream:stream")
    if start >= 0:
        close = window.find(b">", start)
        if close >= 0:
            scope, closed = window[:close + 1], True
    if b"jabber" in scope:
        return Verdict.MATCH
    return Verdict.NEXT if closed or len(data) >= XMPP_WINDOW else Verdict.AGAIN


# ---------------------------------------------------------------- socks5
SOCKS5_MAX_METHODS = 10
SOCKS5_MAX_METHOD = 9


def probe_socks5(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """sslh's rule: version 5, 1..10 methods, every method byte <= 9; each byte checked on arrival."""
    if len(data) >= 1 and data[0] != 5:
        return Verdict.NEXT
    if len(data) >= 2 and not 1 <= data[1] <= SOCKS5_MAX_METHODS:
        return Verdict.NEXT
    if len(data) < 2:
        return Verdict.AGAIN
    methods = data[2:2 + data[1]]
    if any(m > SOCKS5_MAX_METHOD for m in methods):
        return Verdict.NEXT
    return Verdict.MATCH if len(methods) == data[1] else Verdict.AGAIN


# ---------------------------------------------------------------- adb
ADB_SHAPES = family(
    _placed({0: b"CNXN", 24: b"host:"}),
    _placed({0: bytes(20) + b"\xff" * 4, 24: b"CNXN", 48: b"host:"}),   # after ADB 26's empty message
)


def probe_adb(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """sslh's two forms of an ADB CONNECT: `CNXN` + `host:` at offset 24, or the same 24 bytes later
    behind an empty message (20 zero bytes + ff ff ff ff).  NEXT as soon as a fixed byte differs."""
    return match_shapes(data, ADB_SHAPES)


# ---------------------------------------------------------------- syslog
def _syslog_shapes() -> Family:
    """sslh's `^([0-9]{1,3} )?<[0-9]{1,3}>` spelled out as 12 fixed shapes."""
    prefixes = [()] + [(DIGITS,) * n + literal(b" ") for n in (1, 2, 3)]
    pris = [literal(b"<") + (DIGITS,) * n + literal(b">") for n in (1, 2, 3)]
    return family(*(p + q for p in prefixes for q in pris))


SYSLOG_SHAPES = _syslog_shapes()


def probe_syslog(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """`<PRI>` with 1-3 digits, optionally behind an octet count of 1-3 digits and a space (sslh's rule).
    AGAIN only while the bytes are a prefix of that (sslh never says AGAIN)."""
    return match_shapes(data, SYSLOG_SHAPES)


# ---------------------------------------------------------------- msrdp
MSRDP_MIN_TPKT = 11         # TPKT header 4 + X.224 Connection Request header 7
MSRDP_MAX_TPKT = 4 + 1 + 254
X224_CONNECTION_REQUEST = 0xE0


def probe_msrdp(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """RDP's first PDU: TPKT (03 00, 16-bit big-endian total length) around an X.224 Connection Request.

    sslh compared the TPKT length, truncated to a char, with the bytes buffered.  Here the full 16-bit
    length is checked against the X.224 length indicator (which must be length - 5) and the CR code
    0xE0 must follow, so the packet need not be complete or alone.  NEXT at the first wrong byte.
    """
    if len(data) >= 1 and data[0] != 3:
        return Verdict.NEXT
    if len(data) >= 2 and data[1] != 0:
        return Verdict.NEXT
    if len(data) >= 3 and data[2] > MSRDP_MAX_TPKT >> 8:
        return Verdict.NEXT
    if len(data) < 4:
        return Verdict.AGAIN
    tpkt_len = int.from_bytes(data[2:4], "big")
    if not MSRDP_MIN_TPKT <= tpkt_len <= MSRDP_MAX_TPKT:
        return Verdict.NEXT
    if len(data) >= 5 and data[4] != tpkt_len - 5:
        return Verdict.NEXT
    if len(data) >= 6 and data[5] != X224_CONNECTION_REQUEST:
        return Verdict.NEXT
    return Verdict.MATCH if len(data) >= 6 else Verdict.AGAIN


# ---------------------------------------------------------------- regex
def probe_regex(data: bytes, opts: Mapping[str, object]) -> Verdict:
    """sslh: unanchored search of every pattern over the raw bytes; MATCH if one matches, else NEXT.
    AGAIN only on b"" and while shorter than `min_length`."""
    if not data or len(data) < opts.get("min_length", 0):
        return Verdict.AGAIN
    patterns: Sequence[re.Pattern[bytes]] = opts.get("regex", ())
    return Verdict.MATCH if any(p.search(data) for p in patterns) else Verdict.NEXT


# ---------------------------------------------------------------- registry
PROBES: dict[str, ProbeSpec] = {
    "ssh": ProbeSpec(probe_ssh, frozenset()),
    "tls": ProbeSpec(probe_tls, frozenset({"sni", "alpn"})),
    "http": ProbeSpec(probe_http, frozenset({"host"})),
    "openvpn": ProbeSpec(probe_openvpn, frozenset()),
    "tinc": ProbeSpec(probe_tinc, frozenset()),
    "xmpp": ProbeSpec(probe_xmpp, frozenset()),
    "socks5": ProbeSpec(probe_socks5, frozenset()),
    "adb": ProbeSpec(probe_adb, frozenset()),
    "syslog": ProbeSpec(probe_syslog, frozenset()),
    "msrdp": ProbeSpec(probe_msrdp, frozenset()),
    "regex": ProbeSpec(probe_regex, frozenset({"regex", "min_length"})),
    "any": ProbeSpec(probe_any, frozenset()),
}


# ---------------------------------------------------------------- options
def _string_list(key: str, raw: object) -> list[str]:
    """A config value given as one string or a list of strings; none may be empty."""
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(key, "expected a non-empty list of strings")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(key, f"bad entry {item!r}: expected a non-empty string")
    return list(items)


def _compile_regexes(raw: object) -> list[re.Pattern[bytes]]:
    """Patterns are text encoded as UTF-8; `\\xNN` escapes in them stand for raw bytes."""
    compiled = []
    for pattern in _string_list("regex", raw):
        try:
            compiled.append(re.compile(pattern.encode("utf-8")))
        except re.error as e:
            raise ValueError("regex", f"bad pattern '{pattern}': {e}") from None
    return compiled


def _min_length(raw: object) -> int:
    if isinstance(raw, bool):
        raise ValueError("min_length", f"expected a non-negative integer, got {raw!r}")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError("min_length", f"expected a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise ValueError("min_length", f"must be >= 0, got {value}")
    return value


_PREPARE: dict[str, Callable[[object], object]] = {
    "sni": lambda raw: [g.strip().lower() for g in _string_list("sni", raw)],
    "host": lambda raw: [g.strip().lower() for g in _string_list("host", raw)],
    "alpn": lambda raw: [g.strip() for g in _string_list("alpn", raw)],
    "regex": _compile_regexes,
    "min_length": _min_length,
}


def prepare_options(probe: str, raw: dict[str, object]) -> dict:
    """Turn a route's raw probe options (strings / lists of strings / int) into what the probe takes.

    Raises ValueError(key, message) for an unknown probe (key "probe"), a key the probe does not accept,
    a bad value, or a `regex` route without patterns.
    """
    spec = PROBES.get(probe)
    if spec is None:
        raise ValueError("probe", f"unknown probe '{probe}'")
    prepared: dict[str, object] = {}
    for key, value in raw.items():
        if key not in spec.keys:
            raise ValueError(key, f"not an option of probe '{probe}'")
        prepared[key] = _PREPARE[key](value)
    if probe == "regex" and "regex" not in prepared:
        raise ValueError("regex", "probe 'regex' needs at least one pattern")
    return prepared
