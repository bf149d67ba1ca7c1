"""Contexts from route options, exercised through a TLSEngine against an in-memory SSLObject peer."""

from __future__ import annotations

import ssl
import subprocess
import time

import pytest

from epollmux.tls.contexts import (RouteTLS, TLSConfigError, backend_context, build_listener_context,
                             check_listener_tls, check_route_tls, route_for_sni, server_context, sni_matches)
from epollmux.tls.engine import CloseReason, Event, TLSEngine, TLSState
from test_tlsengine import TLS12, TLS13, Peer, client_context, handshake


@pytest.fixture(scope="module")
def leaves(tls_ca):
    return {
        "a": tls_ca.issue(["a.example"], key="ec"),
        "b": tls_ca.issue(["b.example", "*.b.example"], key="rsa"),
        "client": tls_ca.issue(["client.example"], key="ec"),
    }


def route(name, leaf, **options) -> RouteTLS:
    return RouteTLS.from_options(name, {"tls_cert": str(leaf.chain), "tls_key": str(leaf.key), **options})


def connect(ctx, tls_ca, sni, **client):
    engine = TLSEngine(ctx)
    peer = Peer(client_context(tls_ca, **client), sni)
    outcomes = handshake(engine, peer)
    return engine, peer, outcomes


def served_cn(peer: Peer) -> str:
    return dict(rdn[0] for rdn in peer.obj.getpeercert()["subject"])["commonName"]


# -- option parsing and SNI globs ----------------------------------------------------------------------

def test_options_are_typed_from_config_values():
    parsed = RouteTLS.from_options("web", {"sni": "a.example, *.A.example", "tls_cert": "/c.pem",
                                           "tls_alpn": ["h2", "http/1.1"], "tls_resumption": "no",
                                           "backend_tls": True, "tls_min_version": "1.3"})
    assert parsed.sni == ("a.example", "*.A.example") and parsed.alpn == ("h2", "http/1.1")
    assert parsed.resumption is False and parsed.backend_tls is True and parsed.min_version == "1.3"
    assert parsed.terminates and not RouteTLS("plain").terminates
    with pytest.raises(TLSConfigError) as caught:
        RouteTLS.from_options("web", {"tls_resumption": "maybe"})
    assert caught.value.key == "tls_resumption"


def test_sni_globs_are_case_insensitive_and_default_to_the_first_route():
    first, wild = RouteTLS("first", sni=("a.example",)), RouteTLS("wild", sni=("*.B.example", "b.example"))
    assert sni_matches(wild.sni, "X.b.EXAMPLE") and sni_matches(wild.sni, "b.example.")
    assert not sni_matches(wild.sni, "b.example.org") and not sni_matches(wild.sni, None)
    assert route_for_sni([first, wild], "deep.x.b.example") is wild
    assert route_for_sni([first, wild], "A.Example") is first
    assert route_for_sni([wild, first], "unknown.example") is wild
    assert route_for_sni([first, wild], None) is first


# -- terminating contexts ----------------------------------------------------------------------------

def test_sni_picks_the_certificate_and_names_the_route(leaves, tls_ca):
    listener = build_listener_context([route("a", leaves["a"], sni="a.example"),
                                       route("b", leaves["b"], sni="*.b.example, B.example")])
    cases = [("a.example", "a.example", "a"), ("x.b.example", "b.example", "b"),
             ("B.EXAMPLE", "b.example", "b"), ("other.example", "a.example", "a")]
    for sni, cn, route_name in cases:
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(cafile=str(tls_ca.cert))
        client.check_hostname = False                       # "other.example" gets the default cert
        engine, peer = TLSEngine(listener), Peer(client, sni)
        assert handshake(engine, peer) == [Event.HANDSHAKE_DONE], sni
        assert served_cn(peer) == cn
        assert (engine.sni, engine.route) == (sni, route_name)


def test_no_sni_gets_the_first_route(leaves, tls_ca):
    listener = build_listener_context([route("b", leaves["b"], sni="b.example"), route("a", leaves["a"])])
    client = client_context(tls_ca)
    client.check_hostname = False
    engine, peer = TLSEngine(listener), Peer(client, None)
    assert handshake(engine, peer) == [Event.HANDSHAKE_DONE]
    assert served_cn(peer) == "b.example" and engine.sni is None and engine.route == "b"


def test_alpn_follows_the_server_preference(leaves, tls_ca):
    ctx = server_context(route("a", leaves["a"], tls_alpn="h2, http/1.1"))
    for offered, chosen in [(["http/1.1", "h2"], "h2"), (["http/1.1"], "http/1.1"), (["spdy/3"], None)]:
        engine, peer, outcomes = connect(ctx, tls_ca, "a.example", alpn=offered)
        assert outcomes == [Event.HANDSHAKE_DONE]                # no overlap is not fatal
        assert engine.alpn() == chosen == peer.obj.selected_alpn_protocol()


def test_alpn_is_per_route_after_an_sni_switch(leaves, tls_ca):
    listener = build_listener_context([route("a", leaves["a"], sni="a.example", tls_alpn="h2"),
                                       route("b", leaves["b"], sni="b.example", tls_alpn="http/1.1")])
    engine, _, _ = connect(listener, tls_ca, "b.example", alpn=["h2", "http/1.1"])
    assert engine.alpn() == "http/1.1"


@pytest.mark.parametrize("maximum, version", [(TLS12, "TLSv1.2"), (TLS13, "TLSv1.3")])
def test_tls12_and_tls13(leaves, tls_ca, maximum, version):
    engine, peer, outcomes = connect(server_context(route("a", leaves["a"])), tls_ca, "a.example",
                                     maximum=maximum)
    assert outcomes == [Event.HANDSHAKE_DONE] and engine.version() == version == peer.obj.version()


def test_min_version_refuses_older_clients(leaves, tls_ca):
    ctx = server_context(route("a", leaves["a"], tls_min_version="1.3"))
    engine, peer, outcomes = connect(ctx, tls_ca, "a.example", maximum=TLS12)
    assert outcomes == [CloseReason.HANDSHAKE_FAILED] and engine.detail == "unsupported_protocol"
    assert peer.error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"   # the engine's alert reached the client


def test_cipher_string_applies_to_tls12(leaves, tls_ca):
    ctx = server_context(route("a", leaves["a"], tls_ciphers="ECDHE-ECDSA-CHACHA20-POLY1305"))
    engine, _, _ = connect(ctx, tls_ca, "a.example", maximum=TLS12)
    assert engine.cipher() == "ECDHE-ECDSA-CHACHA20-POLY1305"


@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_client_certificate_required(leaves, tls_ca, make_ca_factory, maximum):
    ctx = server_context(route("a", leaves["a"], tls_client_ca=str(tls_ca.cert)))
    engine, _, outcomes = connect(ctx, tls_ca, "a.example", maximum=maximum)
    assert outcomes == [CloseReason.HANDSHAKE_FAILED] and engine.detail == "peer_did_not_return_a_certificate"
    assert not engine.peer_verified()

    stranger = make_ca_factory("stranger CA").issue(["client.example"])
    engine, _, outcomes = connect(ctx, tls_ca, "a.example", maximum=maximum, cert=stranger)
    assert outcomes == [CloseReason.HANDSHAKE_FAILED] and engine.detail.startswith("certificate verify failed")

    engine, _, outcomes = connect(ctx, tls_ca, "a.example", maximum=maximum, cert=leaves["client"])
    assert outcomes == [Event.HANDSHAKE_DONE]
    assert engine.peer_verified() and engine.peer_cn() == "client.example"
    assert engine.peer_cert_der() == ssl.PEM_cert_to_DER_cert(leaves["client"].cert.read_text())


def resume(ctx, tls_ca, maximum, sni="a.example"):
    """A first handshake, then a second one offering its session: (first engine, second engine, session)."""
    client = client_context(tls_ca, maximum)
    first, peer = TLSEngine(ctx), Peer(client, sni)
    assert handshake(first, peer) == [Event.HANDSHAKE_DONE]
    peer.read()                                              # TLS 1.3 tickets arrive after the handshake
    session = peer.obj.session
    second, again = TLSEngine(ctx), Peer(client, sni, session=session)
    assert handshake(second, again) == [Event.HANDSHAKE_DONE]
    assert second.session_reused() == again.obj.session_reused
    return first, second, session


@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_resumption_on(leaves, tls_ca, maximum):
    first, second, session = resume(server_context(route("a", leaves["a"])), tls_ca, maximum)
    assert not first.session_reused() and second.session_reused() and session.has_ticket


@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_resumption_off_issues_no_ticket(leaves, tls_ca, maximum):
    ctx = server_context(route("a", leaves["a"], tls_resumption="no"))
    _, second, session = resume(ctx, tls_ca, maximum)
    assert not session.has_ticket
    if maximum is TLS13:
        assert not second.session_reused()


def test_known_limit_tls12_session_id_resumption_survives_resumption_off(leaves, tls_ca):
    # Python cannot set SSL_SESS_CACHE_OFF: if this starts failing, tlsctx can finish the job.
    ctx = server_context(route("a", leaves["a"], tls_resumption="no"))
    _, second, _ = resume(ctx, tls_ca, TLS12)
    assert second.session_reused()


def test_listener_refuses_routes_that_an_sni_switch_cannot_tell_apart(leaves, tls_ca):
    base = route("a", leaves["a"], sni="a.example")
    others = [route("b", leaves["b"], tls_min_version="1.3"), route("b", leaves["b"], tls_ciphers="ECDHE+AESGCM"),
              route("b", leaves["b"], tls_client_ca=str(tls_ca.cert)), route("b", leaves["b"], tls_resumption="no")]
    keys = ["tls_min_version", "tls_ciphers", "tls_client_ca", "tls_resumption"]
    for other, key in zip(others, keys):
        assert [(name, k) for name, k, _ in check_listener_tls([base, other])] == [("b", key)]
        with pytest.raises(TLSConfigError) as caught:
            build_listener_context([base, other])
        assert caught.value.key == key
    same_ca = [route("a", leaves["a"], tls_client_ca=str(tls_ca.cert)),
               route("b", leaves["b"], tls_client_ca=str(tls_ca.cert))]
    assert check_listener_tls(same_ca) == [] and check_listener_tls([base, RouteTLS("passthrough")]) == []


def test_client_ca_applies_after_an_sni_switch(leaves, tls_ca):
    listener = build_listener_context([route("a", leaves["a"], sni="a.example", tls_client_ca=str(tls_ca.cert)),
                                       route("b", leaves["b"], sni="b.example", tls_client_ca=str(tls_ca.cert))])
    engine, _, outcomes = connect(listener, tls_ca, "b.example")
    assert outcomes == [CloseReason.HANDSHAKE_FAILED]
    engine, _, outcomes = connect(listener, tls_ca, "b.example", cert=leaves["client"])
    assert outcomes == [Event.HANDSHAKE_DONE] and engine.route == "b" and engine.peer_cn() == "client.example"


# -- backend side ---------------------------------------------------------------------------------------

def backend_handshake(client_ctx, server_ctx, hostname):
    engine = TLSEngine(client_ctx, server_side=False, server_hostname=hostname)
    server = Peer(server_ctx, server_side=True)
    for _ in range(6):
        if engine.state is TLSState.HANDSHAKING:
            outcome = engine.step()
            if outcome is not None:
                return engine, outcome
        server.incoming.write(engine.take_ciphertext())
        server.handshake()
        engine.feed_ciphertext(server.outgoing.read())
    return engine, None


def test_backend_tls_is_verified_with_its_ca_and_name(leaves, tls_ca, make_ca_factory):
    backend_server = server_context(route("backend", leaves["b"]))
    client = backend_context(RouteTLS.from_options("r", {"backend_tls": "yes", "backend_tls_ca": str(tls_ca.cert),
                                                          "backend_sni": "api.b.example"}))
    engine, outcome = backend_handshake(client, backend_server, "api.b.example")
    assert outcome is Event.HANDSHAKE_DONE and engine.peer_verified() and engine.peer_cn() == "b.example"

    engine, outcome = backend_handshake(client, backend_server, "a.example")
    assert outcome is CloseReason.HANDSHAKE_FAILED and "hostname mismatch" in engine.detail.lower()

    other = make_ca_factory("other CA")
    distrusting = backend_context(RouteTLS("r", backend_tls=True, backend_ca=str(other.cert)))
    engine, outcome = backend_handshake(distrusting, backend_server, "b.example")
    assert outcome is CloseReason.HANDSHAKE_FAILED
    assert engine.detail.startswith("certificate verify failed: self-signed")


# -- --check -----------------------------------------------------------------------------------------------

def keys_of(problems):
    return sorted(key for key, _ in problems)


def good_options(leaf, **extra):
    return {"tls_cert": str(leaf.chain), "tls_key": str(leaf.key), **extra}


def test_check_accepts_a_good_route(leaves, tls_ca):
    options = good_options(leaves["b"], tls_min_version="1.2", tls_ciphers="ECDHE+AESGCM", tls_alpn="h2",
                           tls_client_ca=str(tls_ca.cert), tls_resumption="yes", backend_tls="yes",
                           backend_tls_ca=str(tls_ca.cert), backend_sni="api.internal")
    assert check_route_tls(options) == []
    assert check_route_tls({"backend": "127.0.0.1:22"}) == []         # not TLS at all


def test_check_reports_unreadable_and_wrong_files(leaves, tls_ca, tmp_path):
    leaf = leaves["a"]
    missing = check_route_tls(good_options(leaf, tls_cert=str(tmp_path / "nope.pem")))
    assert ("tls_cert" in keys_of(missing)) and "No such file" in missing[0][1]
    assert "Is a directory" in check_route_tls(good_options(leaf, tls_cert=str(tmp_path)))[0][1]
    not_cert = check_route_tls(good_options(leaf, tls_cert=str(leaf.key)))
    assert ("tls_cert", f"{leaf.key} holds no PEM certificate") in not_cert
    assert keys_of(check_route_tls(good_options(leaf, tls_key=str(tmp_path / "nope.key")))) == ["tls_key"]
    assert check_route_tls(good_options(leaf, tls_key=str(leaf.cert))) == [
        ("tls_key", f"{leaf.cert} holds no usable PEM private key")]
    assert check_route_tls(good_options(leaf, tls_key=None, tls_cert=str(leaf.cert))) == [
        ("tls_key", f"not set, and {leaf.cert} holds no private key")]
    assert keys_of(check_route_tls(good_options(leaf, tls_client_ca=str(tmp_path / "ca.pem")))) == ["tls_client_ca"]
    assert check_route_tls(good_options(leaf, tls_client_ca=str(leaf.key))) == [
        ("tls_client_ca", f"{leaf.key} holds no PEM CA certificate")]


def test_check_reports_a_key_that_does_not_match(tls_ca):
    pair = tls_ca.mismatched(["m.example"])
    problems = check_route_tls(good_options(pair))
    assert problems == [("tls_key", f"does not match the certificate in {pair.chain}")]


def test_check_refuses_encrypted_keys_without_prompting(leaves, tmp_path):
    encrypted = tmp_path / "enc.key"
    subprocess.run(["openssl", "pkey", "-in", str(leaves["a"].key), "-aes256", "-passout", "pass:secret",
                    "-out", str(encrypted)], check=True, timeout=30, stdin=subprocess.DEVNULL)
    problems = check_route_tls(good_options(leaves["a"], tls_key=str(encrypted)))
    assert problems == [("tls_key", "the private key is encrypted; passphrases are not supported")]


def test_check_reports_expired_and_not_yet_valid_certificates(tls_ca):
    expired = tls_ca.issue(["old.example"], days=-1, start_days=-30)
    future = tls_ca.issue(["new.example"], days=60, start_days=30)
    assert [(k, m.split(" ")[1]) for k, m in check_route_tls(good_options(expired))] == [("tls_cert", "expired")]
    assert [(k, "not valid before" in m) for k, m in check_route_tls(good_options(future))] == [("tls_cert", True)]
    assert check_route_tls(good_options(future), now=time.time() + 45 * 86400) == []


def test_check_reports_bad_values(leaves):
    leaf = leaves["a"]
    assert keys_of(check_route_tls(good_options(leaf, tls_min_version="1.1"))) == ["tls_min_version"]
    assert check_route_tls(good_options(leaf, tls_ciphers="NONSENSE")) == [
        ("tls_ciphers", "no usable TLS <= 1.2 cipher in 'NONSENSE'")]
    assert keys_of(check_route_tls(good_options(leaf, tls_ciphers="ECDHE+AESGCM", tls_min_version="1.3"))) == [
        "tls_ciphers"]
    assert keys_of(check_route_tls(good_options(leaf, tls_alpn=["h2", "x" * 256]))) == ["tls_alpn"]
    assert keys_of(check_route_tls(good_options(leaf, tls_resumption="maybe"))) == ["tls_resumption"]


def test_check_reports_keys_that_do_not_fit(leaves, tls_ca):
    problems = check_route_tls({"tls_key": "/k.pem", "tls_alpn": "h2", "backend_sni": "x.example"})
    assert keys_of(problems) == ["backend_sni", "tls_alpn", "tls_key"]
    assert check_route_tls({"backend_tls": "yes", "backend": "unix:/run/app.sock"}) == [
        ("backend_sni", "required with backend_tls to a unix: backend")]
    assert keys_of(check_route_tls({"backend_tls": "yes", "backend_sni": "*.example"})) == ["backend_sni"]
    assert keys_of(check_route_tls({"backend_tls": "yes", "backend_tls_ca": str(leaves["a"].key)})) == [
        "backend_tls_ca"]


def test_check_reports_every_problem_at_once(leaves, tmp_path):
    problems = check_route_tls(good_options(leaves["a"], tls_key=str(tmp_path / "k"), tls_min_version="9",
                                            tls_ciphers="NONSENSE", tls_client_ca=str(tmp_path / "ca")))
    assert keys_of(problems) == ["tls_ciphers", "tls_client_ca", "tls_key", "tls_min_version"]


def test_building_fails_with_the_same_messages(leaves, tls_ca):
    with pytest.raises(TLSConfigError) as caught:
        server_context(RouteTLS("m", cert=str(tls_ca.mismatched(["m.example"]).chain),
                                key=str(leaves["a"].key)))
    assert caught.value.key == "tls_key" and "does not match" in caught.value.message
    with pytest.raises(TLSConfigError):
        server_context(RouteTLS("passthrough"))
