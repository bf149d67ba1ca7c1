"""Tests for epollmux.wire.clienthello: real captured hellos, synthetic ones, malformed ones, and properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epollmux.wire.clienthello import MAX_HELLO_BYTES, HelloStatus, parse_client_hello
from support.hello_builder import alpn_extension, build_client_hello, EXT_SERVER_NAME, extension, handshake, hello_body, records, sni_extension, u16, vec16, versions_extension
from support.probe_fixtures import chunkings, FIXTURES

TLS_FIXTURES = [f for f in FIXTURES.values() if f.probe == "tls"]
OK, NEED_MORE, NOT_TLS, INVALID = HelloStatus.OK, HelloStatus.NEED_MORE, HelloStatus.NOT_TLS, HelloStatus.INVALID


def status(data: bytes) -> HelloStatus:
    return parse_client_hello(data).status


# ------------------------------------------------------------------ real clients
@pytest.mark.parametrize("fx", TLS_FIXTURES, ids=lambda f: f.name)
def test_fixture_parses_with_expected_sni_and_alpn(fx):
    hello = parse_client_hello(fx.data)
    assert hello.status is OK, hello.reason
    assert hello.sni == fx.sni
    assert hello.alpn == fx.alpn
    assert hello.length == len(fx.data)
    assert not hello.has_ech


@pytest.mark.parametrize("fx", TLS_FIXTURES, ids=lambda f: f.name)
def test_every_proper_prefix_of_a_fixture_needs_more(fx):
    data = fx.data
    assert all(status(data[:n]) is NEED_MORE for n in range(len(data)))


@pytest.mark.parametrize("fx", TLS_FIXTURES, ids=lambda f: f.name)
def test_fixture_in_chunks_is_ok_only_at_the_end(fx):
    for label, chunks in chunkings(fx.data):
        seen, results = b"", []
        for chunk in chunks:
            seen += chunk
            results.append(status(seen))
        assert results[-1] is OK, label
        assert all(r is NEED_MORE for r in results[:-1]), label


def test_fixture_versions():
    assert parse_client_hello(FIXTURES["tls_openssl12"].data).versions == (0x0303,)
    assert parse_client_hello(FIXTURES["tls_openssl13"].data).versions == (0x0304,)
    assert parse_client_hello(FIXTURES["tls_curl_sni"].data).versions[0] == 0x0304


def test_openssl_hello_fragmented_over_two_records():
    data = FIXTURES["tls_openssl13_fragmented"].data
    first_len = int.from_bytes(data[3:5], "big")
    assert data[5 + first_len] == 0x16, "fixture should hold a second handshake record"
    assert parse_client_hello(data).sni == FIXTURES["tls_openssl13_fragmented"].sni


# ------------------------------------------------------------------ synthetic hellos
def test_two_kilobyte_hello_split_over_two_records():
    data = build_client_hello(sni="PQ.Example.ORG", alpn=("h2", "http/1.1"), pad_to=2048, record_split=1000)
    assert data.count(b"\x16\x03\x01") >= 2
    hello = parse_client_hello(data)
    assert hello.status is OK
    assert hello.sni == "pq.example.org"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.length == len(data) >= 2048


@pytest.mark.parametrize("split", [1, 2, 3, 4, 5, 38, 39, 40, 100, [1, 2, 3], list(range(1, 60, 7))])
def test_hello_split_anywhere_reassembles(split):
    data = build_client_hello(sni="a.example.org", alpn=("h2",), record_split=split)
    hello = parse_client_hello(data)
    assert (hello.status, hello.sni, hello.alpn) == (OK, "a.example.org", ("h2",))


def test_trailing_bytes_are_not_part_of_the_hello():
    data = build_client_hello(sni="x.org")
    hello = parse_client_hello(data + b"\x17\x03\x03\x00\x10garbage")
    assert hello.status is OK and hello.length == len(data)


def test_hello_without_extensions_is_ok_without_sni():
    data = records(handshake(hello_body(None)))
    hello = parse_client_hello(data)
    assert (hello.status, hello.sni, hello.alpn, hello.versions) == (OK, None, (), (0x0303,))


def test_ech_and_grease_versions():
    data = build_client_hello(sni="public.example.org", versions=(0x1A1A, 0x0304, 0x0303), ech=True)
    hello = parse_client_hello(data)
    assert hello.has_ech and hello.sni == "public.example.org"
    assert hello.versions == (0x0304, 0x0303)


def test_first_host_name_wins():
    exts = extension(EXT_SERVER_NAME, vec16(b"\x00" + vec16(b"first.org") + b"\x00" + vec16(b"second.org")))
    assert parse_client_hello(records(handshake(hello_body(exts)))).sni == "first.org"


def test_hello_at_the_cap_is_ok_and_one_byte_more_is_invalid():
    at_cap = build_client_hello(sni="big.org", pad_to=MAX_HELLO_BYTES)
    assert len(at_cap) == MAX_HELLO_BYTES + 5
    assert status(at_cap) is OK
    over = build_client_hello(sni="big.org", pad_to=MAX_HELLO_BYTES + 1, record_split=8000)
    assert status(over) is INVALID
    assert status(over[:9]) is INVALID, "the handshake header alone decides"


# ------------------------------------------------------------------ not TLS / invalid
@pytest.mark.parametrize("data", [
    b"SSH-2.0-x\r\n", b"GET / HTTP/1.1\r\n", b"\x15", b"\x16\x02", b"\x16\x04",
    b"\x80\x2e\x01\x03\x01",                                  # SSLv2-format hello
    b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",                  # ServerHello
])
def test_not_tls(data):
    assert status(data) is NOT_TLS


def body_with(exts: bytes) -> bytes:
    return records(handshake(hello_body(exts)))


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x41",                                              # record > 2**14, seen at byte 4
    b"\x16\x03\x01\x40\x01",                                          # record of 16385
    b"\x16\x03\x01\x00\x00",                                          # empty handshake record
    records(handshake(hello_body(b"", legacy_version=0x0203))),       # legacy_version major 2
    body_with(sni_extension("a.org") + sni_extension("b.org")),       # duplicate extension
    body_with(sni_extension(b"caf\xc3\xa9.org")),                     # SNI not ASCII
    body_with(alpn_extension([b"h2", b""])),                          # empty ALPN name
    body_with(extension(EXT_SERVER_NAME, vec16(b"\x00" + vec16(b"a.org")) + b"x")),  # trailing in SNI
    body_with(u16(0x0000) + u16(500) + b"abc"),                       # extension overruns the block
    body_with(versions_extension([0x0304])[:-1] + b""),               # versions list overruns
])
def test_invalid(data):
    assert status(data) is INVALID


def test_session_id_longer_than_32_is_invalid_before_the_hello_is_complete():
    body = b"\x03\x03" + bytes(32) + b"\x21" + bytes(33)
    data = records(handshake(body + bytes(100)))
    assert status(data[:5 + 4 + 2 + 32 + 1]) is INVALID


def test_second_record_of_another_type_is_invalid():
    data = build_client_hello(sni="a.org", record_split=20)
    second = 5 + 20
    assert status(data[:second] + b"\x17") is INVALID
    assert status(data[:second] + b"\x16\x02") is INVALID


# ------------------------------------------------------------------ recorded results
# 826 inputs derived from the real fixtures: each length/type field set to edge values, extensions retyped
# as SNI/ALPN/supported_versions/ECH/duplicates, random byte edits, record headers edited, other record
# framings, shorter and longer handshakes, each truncated at several points.  `want` is what the parser
# at 402f481 (before the single-loop rewrite) returned: status and reason, or every field of an OK result.
RECORDED = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "clienthello_recorded.json").read_text())


def recorded_input(case: dict) -> bytes:
    """Rebuild a recorded input: edit the fixture's handshake bytes, frame them, edit the framing, cut."""
    data = FIXTURES[case["base"]].data
    hs, splits, pos = b"", [], 0
    while pos < len(data):
        if hs:
            splits.append(len(hs))
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        hs, pos = hs + data[pos + 5:pos + 5 + n], pos + 5 + n
    edited = bytearray(hs)
    for off, value in case.get("hs", []):
        edited[off] = value
    hs = bytes(edited[:case.get("hs_cut", len(edited))]) + bytes.fromhex(case.get("hs_extra", ""))
    framed = bytearray(records(hs, case.get("split", splits), int.from_bytes(data[1:3], "big")))
    for off, value in case.get("rec", []):
        framed[off] = value
    return bytes(framed[:case.get("cut", len(framed))])


def summary(hello) -> object:
    if hello.status is NEED_MORE:
        return "need_more"
    if hello.status is not OK:
        return [hello.status.value, hello.reason]
    return [hello.status.value, hello.sni, hello.server_name, list(hello.alpn), list(hello.versions),
            hello.has_ech, hello.length]


def test_recorded_results_are_unchanged():
    assert len(RECORDED) > 800
    got = [summary(parse_client_hello(recorded_input(case))) for case in RECORDED]
    wrong = [(case, result) for case, result in zip(RECORDED, got) if result != case["want"]]
    assert not wrong, f"{len(wrong)} differ, first: {wrong[0]}"


def test_recorded_inputs_cover_every_reason():
    reasons = {case["want"][1].split(" ")[0] for case in RECORDED if case["want"][0] in ("invalid", "not_tls")}
    assert reasons >= {"record", "handshake", "ClientHello", "legacy_version", "session_id", "bad", "no", "vector",
                       "length", "bytes", "duplicate", "trailing", "empty", "server"}


# ------------------------------------------------------------------ properties
SETTINGS = settings(max_examples=300, deadline=None)


@st.composite
def mutated_hellos(draw):
    base = draw(st.sampled_from([f.data for f in TLS_FIXTURES]
                                + [build_client_hello(sni="m.org", alpn=("h2",), pad_to=2048, record_split=700)]))
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut])


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    assert status(data) in HelloStatus
    assert status(b"\x16\x03\x01" + data) in HelloStatus


@SETTINGS
@given(mutated_hellos(), st.binary(max_size=64))
def test_decided_results_never_change_with_more_bytes(data, more):
    """A decision is final: the verdict (and for OK the whole result) stays with more bytes. An INVALID
    verdict's reason text names the first fault found, which more bytes may place earlier."""
    first = parse_client_hello(data)
    if first.status is not NEED_MORE:
        later = parse_client_hello(data + more)
        assert later.status is first.status, (first, later)
        if first.status is OK:
            assert later == first


@SETTINGS
@given(mutated_hellos())
def test_ok_hello_is_decided_by_its_own_bytes(data):
    hello = parse_client_hello(data)
    if hello.status is OK:
        assert hello.length <= len(data)
        assert parse_client_hello(data[:hello.length]) == hello
        assert status(data[:hello.length - 1]) is NEED_MORE


@SETTINGS
@given(st.integers(0, (1 << 24) - 1))
def test_claimed_hello_length_out_of_bounds_is_invalid_at_once(body_len):
    header = b"\x16\x03\x01\x00\x04\x01" + body_len.to_bytes(3, "big")
    expected = INVALID if body_len + 4 > MAX_HELLO_BYTES or body_len < 41 else NEED_MORE
    assert status(header) is expected
