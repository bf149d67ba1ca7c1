"""Hypothesis properties of every pure parser: ClientHello, PROXY v1/v2, the probes, config values.

What each must hold for any input: never raise; a verdict decided on some bytes is the one given on any
longer input that starts with them (more bytes only turn "need more" into something else); what a builder
writes parses back to what it was given; the incremental HelloReader agrees with the one-shot parser.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from epollmux import config
from epollmux.wire import clienthello as ch
from epollmux.wire import proxybuild as pb
from epollmux.wire import proxyproto as pp
from epollmux.wire.probes import PROBES, Verdict
from support.hello_builder import build_client_hello

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
alpns = st.lists(st.binary(min_size=1, max_size=20).map(lambda b: b.decode("latin-1")), max_size=4)


@st.composite
def hellos(draw) -> bytes:
    """A built hello, maybe split into records, maybe truncated, maybe with bits flipped."""
    hs_len_guess = 400
    cuts = draw(st.lists(st.integers(1, hs_len_guess), max_size=6, unique=True).map(sorted))
    hello = bytearray(build_client_hello(sni=draw(st.none() | hostnames), alpn=draw(alpns),
                                         pad_to=draw(st.sampled_from([0, 512, 2000])),
                                         record_split=cuts or None, ech=draw(st.booleans())))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(hello) - 1))
        hello[i] ^= 1 << draw(st.integers(0, 7))
    if draw(st.booleans()):
        hello = hello[:draw(st.integers(0, len(hello)))]
    return bytes(hello) + draw(st.binary(max_size=8))


# --------------------------------------------------------------------------------- ClientHello
@FAST
@given(st.binary(max_size=600) | hellos())
def test_hello_parse_never_raises_and_decides_for_good(data):
    result = ch._parse(data)
    assert isinstance(result, ch.HelloResult)
    if result.status is not ch.HelloStatus.NEED_MORE:
        # the verdict and fields are decided for good; an INVALID's reason may name another fault found first
        # once more bytes complete a later record header
        assert ch._parse(data + b"\x16\x03\x01\x00\x05extra")._replace(reason="") == result._replace(reason="")


@FAST
@given(hellos(), st.lists(st.integers(1, 300), min_size=1, max_size=40))
def test_hello_reader_agrees_with_the_parser_for_any_chunking(data, steps):
    reader, pos = ch.HelloReader(), 0
    for step in steps * (len(data) // max(1, sum(steps)) + 1):
        if pos >= len(data):
            break
        got = reader.feed(data[pos:pos + step])
        pos = min(len(data), pos + step)
        # the same verdict and fields; an INVALID's reason may name another fault (the reader meets them in
        # arrival order, the one-shot parser checks every record before the body)
        assert got._replace(reason="") == ch._parse(data[:pos])._replace(reason="")


@FAST
@given(st.none() | hostnames, alpns, st.booleans())
def test_a_built_hello_parses_back(sni, alpn, ech):
    hello = build_client_hello(sni=sni, alpn=alpn, ech=ech)
    result = ch._parse(hello + b"after")
    assert result.status is ch.HelloStatus.OK
    assert (result.sni, tuple(result.alpn), result.has_ech, result.length) == (sni, tuple(alpn), ech, len(hello))


# --------------------------------------------------------------------------------- PROXY
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(lambda a: str(a) if not a.ipv4_mapped else "2001:db8::1")
ports = st.integers(0, 65535)


@FAST
@given(st.binary(max_size=300), st.sampled_from(["v1", "v2", "any"]))
def test_proxy_parse_never_raises_and_decides_for_good(data, accept):
    result = pp.parse(data, accept)
    if result.status is pp.Status.INVALID:
        assert pp.parse(data + b"\r\n" + bytes(20), accept).status is pp.Status.INVALID
    if result.status is pp.Status.OK:
        assert pp.parse(data + b"tail", accept).length == result.length <= len(data)


@FAST
@given(st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)), ports, ports, st.booleans(), st.booleans())
def test_proxy_headers_built_parse_back(pair, sport, dport, v2, crc):
    src, dst = (pair[0], sport), (pair[1], dport)
    header = pb.build_v2(src, dst, crc=crc) if v2 else pb.build_v1(src, dst)
    result = pp.parse(header + b"payload")
    assert result.status is pp.Status.OK and result.length == len(header)
    assert ipaddress.ip_address(result.src.host) == ipaddress.ip_address(pair[0]) and result.src.port == sport
    assert ipaddress.ip_address(result.dst.host) == ipaddress.ip_address(pair[1]) and result.dst.port == dport
    for cut in range(len(header)):
        assert pp.parse(header[:cut]).status is pp.Status.NEED_MORE


# --------------------------------------------------------------------------------- probes
DEFAULT_PROBES = sorted(name for name in PROBES if name != "regex")


@FAST
@given(st.sampled_from(DEFAULT_PROBES), st.binary(max_size=200) | hellos(), st.binary(min_size=1, max_size=50))
def test_probes_never_raise_and_decide_for_good(name, data, more):
    verdict = PROBES[name].func(data, {})
    assert isinstance(verdict, Verdict)
    if verdict is not Verdict.AGAIN:
        assert PROBES[name].func(data + more, {}) is verdict, (name, data, more)


# --------------------------------------------------------------------------------- config values
def _config(key: str, value: str) -> str:
    return f"""
[global]
{key} = {value}
[listen]
  [[main]]
  address = 127.0.0.1:1
[routes]
  [[all]]
  probe = any
  backend = 127.0.0.1:2
"""


INT_KEYS = {"max_probe_edges": (1, 1000000), "tcp_keepalive_idle": (1, 32767),
            "tcp_keepalive_interval": (1, 32767), "tcp_keepalive_count": (1, 127),
            "max_probe_bytes": (16, 1048576)}


@FAST
@given(st.sampled_from(sorted(INT_KEYS)), st.integers(-10, 2_000_000))
def test_integer_settings_take_exactly_their_range(key, value):
    low, high = INT_KEYS[key]
    text = _config(key, str(value))
    if low <= value <= high:
        assert getattr(config._build("t", text.splitlines()).settings, key) == value
    else:
        with pytest.raises(config.ConfigError) as info:
            config._build("t", text.splitlines())
        assert key in str(info.value)


@FAST
@given(st.sampled_from(["probe_timeout", "tcp_user_timeout", "idle_timeout", "max_probe_edges", "tcp_keepalive",
                        "relay", "workers", "log_format"]),
       st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20))
@example("workers", ",")                 # a list where a string is expected: was an AttributeError
@example("workers", "²")                 # a digit to str.isdigit, not to int(): was a ValueError
def test_any_value_is_taken_or_refused_with_a_config_error(key, value):
    try:
        config._build("t", _config(key, value).splitlines())
    except config.ConfigError as exc:
        assert str(exc)


# --------------------------------------------------------------------------------- UDP probes
from epollmux.wire import udpsniff  # noqa: E402
from epollmux.wire.udpprobes import UDP_PROBES, prepare_udp_options  # noqa: E402
from support.udp_fixtures import UDP_FIXTURES  # noqa: E402

UDP_SAMPLES = [d for f in UDP_FIXTURES.values() for d in f.datagrams]
UDP_ROUTES = [(p, prepare_udp_options(p, {"regex": "x"} if p == "regex" else {})) for p in UDP_PROBES] + \
    [(p, prepare_udp_options(p, {"sni": "*", "alpn": "*"})) for p in ("quic", "dtls")]


@st.composite
def udp_datagrams(draw) -> bytes:
    """A recorded first datagram, maybe truncated, maybe with bits flipped, maybe with bytes appended."""
    data = bytearray(draw(st.sampled_from(UDP_SAMPLES)))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=4))


@FAST
@given(st.lists(st.binary(max_size=1400) | udp_datagrams(), max_size=5))
def test_udp_probes_never_raise(datagrams):
    flow = tuple(datagrams)
    for probe, opts in UDP_ROUTES:
        assert isinstance(UDP_PROBES[probe].func(flow, opts), Verdict)
    assert isinstance(udpsniff.flow_names(flow), udpsniff.Names)
