"""Tests for epollmux.wire.probes: every probe on real client bytes, byte rules, options, and properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epollmux.wire.probes import PROBES, Verdict, prepare_options
from support.hello_builder import build_client_hello
from support.probe_fixtures import chunkings, FIXTURES

MATCH, NEXT, AGAIN = Verdict.MATCH, Verdict.NEXT, Verdict.AGAIN
PROBE_NAMES = ["ssh", "tls", "http", "openvpn", "tinc", "xmpp", "socks5", "adb", "syslog", "msrdp", "regex",
               "any"]
# Probes whose verdict, once MATCH or NEXT, holds for every longer input (regex is the documented exception).
MONOTONE = [n for n in PROBE_NAMES if n != "regex"]
SPECIFIC = [n for n in PROBE_NAMES if n not in ("regex", "any")]


def run(probe: str, data: bytes, **raw) -> Verdict:
    return PROBES[probe].func(data, prepare_options(probe, raw))


def prefix_verdicts(probe: str, data: bytes, opts=None) -> list[Verdict]:
    opts = opts or {}
    return [PROBES[probe].func(data[:n], opts) for n in range(len(data) + 1)]


def assert_settles(verdicts: list[Verdict]) -> None:
    """AGAIN for a while, then one verdict that never changes."""
    decided = [v for v in verdicts if v is not AGAIN]
    if decided:
        first = verdicts.index(decided[0])
        assert set(verdicts[first:]) == {decided[0]}, verdicts


# ------------------------------------------------------------------ registry
def test_registry_names_and_keys():
    assert sorted(PROBES) == sorted(PROBE_NAMES)
    assert PROBES["tls"].keys == {"sni", "alpn"}
    assert PROBES["http"].keys == {"host"}
    assert PROBES["regex"].keys == {"regex", "min_length"}
    assert all(not PROBES[n].keys for n in PROBE_NAMES if n not in ("tls", "http", "regex"))


@pytest.mark.parametrize("probe", SPECIFIC)
def test_no_bytes_is_again(probe):
    assert PROBES[probe].func(b"", {}) is AGAIN


def test_regex_and_any_on_no_bytes():
    assert run("regex", b"", regex=[".*"]) is AGAIN
    assert run("any", b"") is MATCH


# ------------------------------------------------------------------ real clients
@pytest.mark.parametrize("fx", FIXTURES.values(), ids=lambda f: f.name)
def test_fixture_matches_its_probe_only(fx):
    data = fx.data
    verdicts = {name: PROBES[name].func(data, {}) for name in SPECIFIC}
    assert verdicts[fx.probe] is MATCH
    assert {v for name, v in verdicts.items() if name != fx.probe} == {NEXT}, verdicts


@pytest.mark.parametrize("fx", FIXTURES.values(), ids=lambda f: f.name)
@pytest.mark.parametrize("probe", SPECIFIC)
def test_fixture_verdict_settles_byte_by_byte(fx, probe):
    verdicts = prefix_verdicts(probe, fx.data)
    assert verdicts[0] is AGAIN
    assert_settles(verdicts)


@pytest.mark.parametrize("fx", FIXTURES.values(), ids=lambda f: f.name)
def test_fixture_same_verdict_in_every_chunking(fx):
    probe = PROBES[fx.probe].func
    for label, chunks in chunkings(fx.data):
        seen, verdict = b"", AGAIN
        for chunk in chunks:
            seen += chunk
            verdict = probe(seen, {})
            if verdict is not AGAIN:
                break
        assert verdict is MATCH, label


@pytest.mark.parametrize("fx", [f for f in FIXTURES.values() if f.probe == "tls" and f.sni], ids=lambda f: f.name)
def test_tls_fixture_routes_by_sni_and_alpn(fx):
    data = fx.data
    assert run("tls", data, sni=[fx.sni.upper()]) is MATCH
    assert run("tls", data, sni=["*" + fx.sni[-8:]]) is MATCH
    assert run("tls", data, sni=["other.example.net"]) is NEXT
    if fx.alpn:
        assert run("tls", data, alpn=[fx.alpn[0]]) is MATCH
        assert run("tls", data, sni=[fx.sni], alpn=["imap"]) is NEXT
    else:
        assert run("tls", data, alpn=["h2"]) is NEXT


@pytest.mark.parametrize("name", ["tls_openssl12", "tls_openssl13"])
def test_tls_without_sni_is_next_for_sni_routes(name):
    data = FIXTURES[name].data
    assert run("tls", data) is MATCH
    assert run("tls", data, sni=["*"]) is NEXT


def test_http_fixture_host_routing():
    data = FIXTURES["http_curl_get"].data
    assert run("http", data, host=["WWW.example.org"]) is MATCH          # port stripped, case-folded
    assert run("http", data, host=["*.example.org"]) is MATCH
    assert run("http", data, host=["example.org"]) is NEXT
    h2c = FIXTURES["http_curl_h2c_prior"].data
    assert run("http", h2c, host=["*"]) is NEXT


# ------------------------------------------------------------------ byte rules per probe
@pytest.mark.parametrize("probe, cases", [
    ("ssh", {b"S": AGAIN, b"SSH": AGAIN, b"SSH-": MATCH, b"SSH-2.0-x": MATCH, b"SSX": NEXT, b"ssh-": NEXT,
             b"\x16": NEXT}),
    ("tinc", {b"0": AGAIN, b"0 ": MATCH, b"0 node 17.7\n": MATCH, b"0x": NEXT, b"1 ": NEXT}),
    ("http", {b"G": AGAIN, b"GET": AGAIN, b"GET ": MATCH, b"GETX": NEXT, b"PATCH /x": MATCH,
              b"OPTIONS * HTTP/1.1": MATCH, b"CONNECT a:443": MATCH, b"DELETE ": MATCH, b"TRACE ": MATCH,
              b"HEL": NEXT, b"abc": NEXT, b"get /": NEXT, b"PRI * HTTP/2.0": AGAIN,
              b"PRI * HTTP/2.0\r\n": MATCH, b"PRI * HTTP/1.1\r\n": NEXT, b"xx HTTP/1.1": NEXT}),
    ("openvpn", {b"\x00": AGAIN, b"\x08": AGAIN, b"\x09": NEXT, b"\x00\x0e": AGAIN, b"\x00\x00": NEXT,
                 b"\x00\x0d": NEXT, b"\x08\x01": NEXT, b"\x00\x0e\x38": MATCH, b"\x00\x0e\x08": MATCH,
                 b"\x00\x0e\x50": MATCH, b"\x00\x0e\x39": NEXT, b"\x00\x0e\x40": NEXT, b"\x00\x0e\x20": NEXT}),
    ("socks5", {b"\x05": AGAIN, b"\x05\x01": AGAIN, b"\x05\x01\x00": MATCH, b"\x05\x00": NEXT,
                b"\x05\x0b": NEXT, b"\x05\x03\x00\x02": AGAIN, b"\x05\x03\x00\x0a": NEXT, b"\x04\x01": NEXT,
                b"\x05\x02\x00\x02garbage": MATCH}),
    ("syslog", {b"<": AGAIN, b"<1": AGAIN, b"<13>": MATCH, b"<134>1 x": MATCH, b"<1345>": NEXT, b"<>": NEXT,
                b"12": AGAIN, b"12 ": AGAIN, b"123 <13>": MATCH, b"1234 <13>": NEXT, b"a": NEXT}),
    ("msrdp", {b"\x03": AGAIN, b"\x03\x00\x00": AGAIN, b"\x03\x00\x00\x13": AGAIN, b"\x03\x01": NEXT,
               b"\x03\x00\x02": NEXT, b"\x03\x00\x00\x0a": NEXT, b"\x03\x00\x00\x13\x0e": AGAIN,
               b"\x03\x00\x00\x13\x0d": NEXT, b"\x03\x00\x00\x13\x0e\xe0": MATCH,
               b"\x03\x00\x00\x13\x0e\xd0": NEXT, b"\x04": NEXT}),
    ("xmpp", {b"<": AGAIN, b"<?xm": AGAIN, b"<stream:str": AGAIN, b"<html>": NEXT, b" <?xml": NEXT,
              b"<?xml version='1.0'?>": AGAIN, b"<stream:stream xmlns='jabber:client'>": MATCH,
              b"<stream:stream to='a'>": NEXT, b"<?xml version='1.0'?><stream:stream to='a'": AGAIN}),
])
def test_byte_rules(probe, cases):
    for data, expected in cases.items():
        assert PROBES[probe].func(data, {}) is expected, data


def test_openvpn_partial_packet_and_trailing_bytes():
    packet = FIXTURES["openvpn_tcp"].data
    assert run("openvpn", packet[:3]) is MATCH
    assert run("openvpn", packet + b"\x00\x0e\x20more") is MATCH


def rdp_connection_request(cookie: bytes) -> bytes:
    x224 = b"\xe0\x00\x00\x00\x00\x00" + b"Cookie: mstshash=" + cookie + b"\r\n" + b"\x01\x00\x08\x00\x03\x00\x00\x00"
    return b"\x03\x00" + (5 + len(x224)).to_bytes(2, "big") + bytes([len(x224)]) + x224


@pytest.mark.parametrize("cookie", [b"", b"user", b"u" * 120, b"u" * 200])
def test_msrdp_connection_request_of_any_size(cookie):
    data = rdp_connection_request(cookie)
    assert run("msrdp", data) is MATCH
    assert run("msrdp", data + b"more bytes") is MATCH
    assert_settles(prefix_verdicts("msrdp", data))


def test_xmpp_real_stream_header():
    header = (b"<?xml version='1.0'?><stream:stream to='example.org' xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    assert run("xmpp", header) is MATCH
    assert_settles(prefix_verdicts("xmpp", header))
    assert run("xmpp", b"<?xml" + b" " * 1100) is NEXT


def test_xmpp_jabber_after_the_stream_tag_is_ignored():
    data = b"<stream:stream to='a'><jabber/>"
    assert run("xmpp", data) is NEXT


ADB_CNXN = b"CNXN" + bytes(20) + b"host::features=shell_v2"


@pytest.mark.parametrize("data, expected", [
    (ADB_CNXN, MATCH),
    (bytes(20) + b"\xff" * 4 + ADB_CNXN, MATCH),
    (ADB_CNXN[:20], AGAIN),
    (bytes(20) + b"\xff" * 4 + b"CN", AGAIN),
    (bytes(30), NEXT),
    (b"CNXN" + bytes(20) + b"hosx:", NEXT),
    (b"CNXX", NEXT),
    (bytes(20) + b"\xff\xff\xff\xfe", NEXT),
])
def test_adb(data, expected):
    assert run("adb", data) is expected
    assert_settles(prefix_verdicts("adb", data))


def test_tls_sni_glob_crosses_dots_and_ignores_case():
    deep = build_client_hello(sni="A.B.Example.ORG")
    assert run("tls", deep, sni=["*.example.org"]) is MATCH
    assert run("tls", deep, sni=["?.b.example.org"]) is MATCH
    assert run("tls", build_client_hello(sni="example.org"), sni=["*.example.org"]) is NEXT


def test_tls_alpn_globs_are_case_sensitive_and_both_lists_must_hold():
    hello = build_client_hello(sni="x.org", alpn=("h2", "http/1.1"))
    assert run("tls", hello, alpn=["http/*"]) is MATCH
    assert run("tls", hello, alpn=["H2"]) is NEXT
    assert run("tls", hello, sni=["x.org"], alpn=["h2"]) is MATCH
    assert run("tls", hello, sni=["y.org"], alpn=["h2"]) is NEXT
    assert run("tls", build_client_hello(sni="x.org"), alpn=["*"]) is NEXT


def test_tls_two_kilobyte_hello_over_two_records():
    hello = build_client_hello(sni="pq.example.org", alpn=("h2",), pad_to=2100, record_split=1200)
    verdicts = [PROBES["tls"].func(hello[:n], {"sni": ["pq.example.org"], "alpn": ["h2"]})
                for n in range(len(hello) + 1)]
    assert verdicts[-1] is MATCH
    assert set(verdicts[:-1]) == {AGAIN}


def test_tls_malformed_hello_is_next():
    hello = bytearray(build_client_hello(sni="x.org"))
    hello[5] = 2                                                        # ServerHello
    assert run("tls", bytes(hello)) is NEXT
    assert run("tls", b"\x16\x03\x01\x00\x00") is NEXT


@pytest.mark.parametrize("request_head, expected", [
    (b"GET / HTTP/1.1\r\nHost: a.example.org\r\n\r\n", MATCH),
    (b"GET / HTTP/1.1\r\nhOsT:A.Example.Org:8080 \r\n\r\n", MATCH),
    (b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: a.example.org\r\nAccept: */*\r\n\r\nbody", MATCH),
    (b"GET / HTTP/1.1\r\nHost: b.example.net\r\n\r\n", NEXT),
    (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", NEXT),
    (b"GET / HTTP/1.1\r\nHost: a.example.org\r\nHost: b.example.net\r\n\r\n", NEXT),
    (b"GET / HTTP/1.1\r\nHost : a.example.org\r\n\r\n", NEXT),
    (b"GET / HTTP/1.1\r\nHost: a.example.org\r\n", AGAIN),
    (b"GET / HTTP/1.1\r\nX-Host: a.example.org\r\n\r\n", NEXT),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", NEXT),
    (b"PR", NEXT),
    (b"P", AGAIN),
])
def test_http_host(request_head, expected):
    assert run("http", request_head, host=["*.example.org"]) is expected


def test_http_host_strips_port_of_ipv6_literal():
    assert run("http", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", host=["[[]::1]"]) is MATCH


def test_regex_min_length_and_search():
    assert run("regex", b"fo", regex=["foo"]) is NEXT
    assert run("regex", b"xxfoo", regex=["bar", "foo"]) is MATCH
    assert run("regex", b"foo", regex=["foo"], min_length=4) is AGAIN
    assert run("regex", b"fooo", regex=["^foo"], min_length="4") is MATCH
    assert run("regex", b"\x16\x03", regex=[r"^\x16\x03"]) is MATCH


def test_any_always_matches():
    assert all(run("any", fx.data) is MATCH for fx in FIXTURES.values())


# ------------------------------------------------------------------ options
def test_prepare_options_shapes_values():
    opts = prepare_options("tls", {"sni": "Example.ORG", "alpn": ["h2", " HTTP/1.1"]})
    assert opts == {"sni": ["example.org"], "alpn": ["h2", "HTTP/1.1"]}
    assert prepare_options("http", {"host": ["A.org", "*.B.org"]}) == {"host": ["a.org", "*.b.org"]}
    regex = prepare_options("regex", {"regex": ["^a", r"\x00b"], "min_length": "3"})
    assert regex["min_length"] == 3
    assert [p.pattern for p in regex["regex"]] == [b"^a", rb"\x00b"]
    assert all(isinstance(p, re.Pattern) for p in regex["regex"])
    assert prepare_options("ssh", {}) == {}


@pytest.mark.parametrize("probe, raw, key, message", [
    ("regex", {"regex": ["("]}, "regex", "bad pattern '(': "),
    ("regex", {"min_length": 4}, "regex", "needs at least one pattern"),
    ("regex", {"regex": "a", "min_length": -1}, "min_length", "must be >= 0"),
    ("regex", {"regex": "a", "min_length": "four"}, "min_length", "non-negative integer"),
    ("regex", {"regex": "a", "min_length": True}, "min_length", "non-negative integer"),
    ("tls", {"sni": []}, "sni", "non-empty list"),
    ("tls", {"sni": ["a.org", ""]}, "sni", "non-empty string"),
    ("tls", {"alpn": [3]}, "alpn", "non-empty string"),
    ("ssh", {"sni": ["a.org"]}, "sni", "not an option of probe 'ssh'"),
    ("http", {"alpn": ["h2"]}, "alpn", "not an option of probe 'http'"),
    ("quic", {}, "probe", "unknown probe 'quic'"),
])
def test_prepare_options_errors(probe, raw, key, message):
    with pytest.raises(ValueError) as err:
        prepare_options(probe, raw)
    assert err.value.args[0] == key
    assert message in err.value.args[1]


# ------------------------------------------------------------------ properties
SETTINGS = settings(max_examples=200, deadline=None)
OPTIONS = {"tls": {"sni": ["*.example.org"], "alpn": ["h2"]}, "http": {"host": ["*.example.org"]}}


@st.composite
def mutated_fixtures(draw):
    data = bytearray(draw(st.sampled_from([f.data for f in FIXTURES.values()])))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    return bytes(data[:draw(st.integers(0, len(data)))])


def every_option_set(probe):
    yield {}
    if probe in OPTIONS:
        yield prepare_options(probe, OPTIONS[probe])


@SETTINGS
@given(st.one_of(st.binary(max_size=300), mutated_fixtures()), st.binary(max_size=40))
def test_verdicts_never_flip_when_bytes_are_added(data, more):
    for probe in MONOTONE:
        for opts in every_option_set(probe):
            first = PROBES[probe].func(data, opts)
            assert isinstance(first, Verdict)
            if first is not AGAIN:
                assert PROBES[probe].func(data + more, opts) is first, (probe, opts)


@SETTINGS
@given(st.binary(max_size=300), st.integers(0, 8))
def test_regex_never_raises_and_waits_only_for_min_length(data, min_length):
    verdict = run("regex", data, regex=["^x", "y$"], min_length=min_length)
    assert (verdict is AGAIN) == (len(data) < max(min_length, 1))
