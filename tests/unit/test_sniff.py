"""Tests for epollmux.wire.sniff.decide: strict order, fallback, full buffers, and real clients in any chunking."""

from __future__ import annotations

import ast
import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epollmux.wire import sniff
from epollmux.wire.probes import PROBES, Verdict, prepare_options
from epollmux.wire.sniff import Decision, decide
from support.hello_builder import build_client_hello
from support.probe_fixtures import chunkings, FIXTURES

MATCH, NEXT, AGAIN = Verdict.MATCH, Verdict.NEXT, Verdict.AGAIN


def route(probe: str, **raw) -> tuple[str, dict]:
    return probe, prepare_options(probe, raw)


# A listener sharing one port between everything; the specific TLS route comes before the general one.
ALL_ROUTES = [
    route("ssh"),
    route("tls", sni=["*.example.org"], alpn=["h2"]),
    route("tls"),
    route("http", host=["www.example.org"]),
    route("http"),
    route("openvpn"),
    route("tinc"),
    route("xmpp"),
    route("socks5"),
    route("adb"),
    route("syslog"),
    route("msrdp"),
    route("any"),
]
FALLBACK = len(ALL_ROUTES) - 1


def expected_route(fx) -> int:
    if fx.probe == "tls":
        return 1 if fx.sni and fx.sni.endswith(".example.org") and "h2" in fx.alpn else 2
    if fx.probe == "http":
        return 3 if fx.name == "http_curl_get" else 4
    return next(i for i, (probe, _) in enumerate(ALL_ROUTES) if probe == fx.probe)


def feed(chunks: list[bytes], routes) -> tuple[Decision, int]:
    """Decide after each chunk, as the caller does; return the first final decision and bytes seen."""
    seen = b""
    for chunk in chunks:
        seen += chunk
        decision = decide(seen, routes)
        if decision.done:
            return decision, len(seen)
    return decide(seen, routes, full=True), len(seen)


# ------------------------------------------------------------------ real clients
@pytest.mark.parametrize("fx", FIXTURES.values(), ids=lambda f: f.name)
def test_fixture_routes_the_same_in_every_chunking(fx):
    want = expected_route(fx)
    for label, chunks in chunkings(fx.data):
        decision, _ = feed(chunks, ALL_ROUTES)
        assert (decision.route, decision.done) == (want, True), label
        assert decision.verdicts[-1] is MATCH
        assert set(decision.verdicts[:-1]) <= {NEXT}, label


def test_ssh_banner_is_decided_after_four_bytes():
    decision, used = feed([bytes([b]) for b in FIXTURES["ssh_openssh"].data], ALL_ROUTES)
    assert (decision.route, used) == (0, 4)


@pytest.mark.parametrize("fx", FIXTURES.values(), ids=lambda f: f.name)
def test_fixture_without_its_route_goes_to_the_fallback(fx):
    routes = [r for r in ALL_ROUTES if r[0] != fx.probe]
    decision = decide(fx.data, routes)
    assert (decision.route, decision.done) == (len(routes) - 1, True)
    assert decision.verdicts == (NEXT,) * (len(routes) - 1) + (MATCH,)


# ------------------------------------------------------------------ strict order
def test_earlier_again_holds_a_later_match():
    routes = [route("regex", regex=["^foo"], min_length=10), route("ssh")]
    waiting = decide(b"SSH-2.0-x", routes)
    assert (waiting.route, waiting.done, waiting.verdicts) == (None, False, (AGAIN,))
    assert decide(b"SSH-2.0-x\r\n", routes).route == 1


def test_first_match_wins_even_when_a_later_route_also_matches():
    routes = [route("tls"), route("tls", sni=["a.org"])]
    decision = decide(build_client_hello(sni="a.org"), routes)
    assert (decision.route, decision.verdicts) == (0, (MATCH,))


def test_incomplete_request_head_waits_for_host():
    routes = [route("http", host=["a.org"]), route("http")]
    head = b"GET / HTTP/1.1\r\nHost: b.org\r\n"
    assert decide(head, routes) == Decision(None, False, (AGAIN,))
    assert decide(head + b"\r\n", routes) == Decision(1, True, (NEXT, MATCH))


def test_all_next_without_any_closes():
    routes = [route("ssh"), route("tls"), route("http")]
    assert decide(b"\x00\x01garbage", routes) == Decision(None, True, (NEXT, NEXT, NEXT))


def test_all_next_falls_back_to_the_last_any_route():
    routes = [route("ssh"), route("tls"), route("any")]
    assert decide(b"hello", routes) == Decision(2, True, (NEXT, NEXT, MATCH))


def test_routes_after_an_any_route_are_never_reached():
    routes = [route("ssh"), route("any"), route("tls"), route("any")]
    assert decide(FIXTURES["tls_curl_sni"].data, routes) == Decision(1, True, (NEXT, MATCH))


def test_empty_data_waits_unless_any_comes_first():
    assert decide(b"", [route("ssh"), route("any")]) == Decision(None, False, (AGAIN,))
    assert decide(b"", [route("any"), route("ssh")]) == Decision(0, True, (MATCH,))


def test_empty_route_list_closes():
    assert decide(b"SSH-", []) == Decision(None, True, ())


# ------------------------------------------------------------------ full buffer
def test_full_turns_again_into_next():
    routes = [route("openvpn"), route("ssh"), route("any")]
    assert decide(b"\x00", routes).done is False
    assert decide(b"\x00", routes, full=True) == Decision(2, True, (NEXT, NEXT, MATCH))


def test_full_keeps_a_match():
    routes = [route("ssh"), route("any")]
    assert decide(b"SSH-2.0", routes, full=True) == Decision(0, True, (MATCH,))


def test_full_without_fallback_closes():
    assert decide(b"GET / HTTP/1.1\r\n", [route("http", host=["a.org"])], full=True) == Decision(None, True, (NEXT,))


# ------------------------------------------------------------------ the decision stays protocol-agnostic
def test_decide_names_no_protocol():
    tree = ast.parse(inspect.getsource(sniff.decide))
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    assert not literals & set(PROBES)


# ------------------------------------------------------------------ properties
SETTINGS = settings(max_examples=200, deadline=None)


@st.composite
def byte_streams(draw):
    """Random bytes or a mutated fixture, cut into random chunks."""
    if draw(st.booleans()):
        data = draw(st.binary(min_size=1, max_size=200))
    else:
        data = bytearray(draw(st.sampled_from([f.data for f in FIXTURES.values()])))
        for _ in range(draw(st.integers(0, 3))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=6)))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@SETTINGS
@given(byte_streams())
def test_decision_does_not_depend_on_chunking(chunks):
    data = b"".join(chunks)
    chunked, used = feed(chunks, ALL_ROUTES)
    bytewise, used_bytewise = feed([data[i:i + 1] for i in range(len(data))], ALL_ROUTES)
    whole = decide(data, ALL_ROUTES, full=True)
    assert chunked.route == bytewise.route == whole.route
    assert chunked.done and bytewise.done and whole.done
    assert used_bytewise <= used
