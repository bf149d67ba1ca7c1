"""TLS contexts built from route options (typed by `options.py`; `--check`'s problems are `checks.py`).

Owns: turning a route's TLS keys into `ssl.SSLContext`s (terminating side, backend side, and one
SNI-switching context per listener) and SNI glob matching.
Contexts are built once per config load, before the workers fork, so all workers share ticket keys.

Must not import: socket, the reactor, the connection, configobj or the config module (it receives plain
mappings and values), or any third-party package. It imports `engine` only for `record_sni`.

Python's ssl limits that shape this module (CPython 3.11, OpenSSL 3.0):
* Switching `SSLObject.context` in `sni_callback` swaps the certificate, the ALPN choice and the CA store
  used for client certificates, but not the protocol versions, the cipher list, the verify mode or the
  ticket/session settings: those stay the listener context's. Routes sharing one SNI-switching listener
  context must therefore agree on tls_min_version, tls_ciphers, tls_client_ca and tls_resumption
  (`check_listener_tls`). The CA must match too: a session resumed under another SNI keeps the client
  certificate that the other route's CA verified.
* TLS 1.3 cipher suites cannot be set (no SSL_CTX_set_ciphersuites): tls_ciphers governs TLS <= 1.2 only.
* The session cache mode cannot be set: with tls_resumption = no, TLS 1.2 clients without a client
  certificate can still resume by session ID within one worker process. TLS 1.3 resumption is fully off.
"""

from __future__ import annotations

import fnmatch
import ssl
from typing import Callable, Iterable, Sequence

from epollmux.tls.engine import record_sni
from epollmux.tls.options import (MIN_VERSIONS, RouteTLS, TLSConfigError, check_listener_tls, load_ca,
                                  load_identity, min_version_value, set_alpn, set_ciphers)

__all__ = ["RouteTLS", "TLSConfigError", "backend_context", "build_listener_context", "route_for_sni",
           "server_context", "sni_matches"]


# -- contexts ------------------------------------------------------------------------------------------

def server_context(route: RouteTLS) -> ssl.SSLContext:
    """The terminating context of one route: every per-route option applies when used directly."""
    if not route.terminates:
        raise TLSConfigError("tls_cert", f"route {route.name!r} does not terminate TLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[min_version_value(route.min_version)]
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if route.ciphers:
        set_ciphers(ctx, route.ciphers)
    load_identity(ctx, route.cert, route.key)
    if route.alpn:
        set_alpn(ctx, route.alpn)
    if route.client_ca:
        load_ca(ctx, "tls_client_ca", route.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if not route.resumption:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    ctx.sni_callback = _recording_callback(route.name)
    return ctx


def backend_context(route: RouteTLS) -> ssl.SSLContext:
    """The client context towards the backend: verified, hostname checked against `backend_sni`.

    Wrap it with server_hostname = route.backend_sni, or the backend's host when that is not set.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION            # a backend's HelloRequest is refused as a client's hello is
    if route.backend_ca:
        load_ca(ctx, "backend_tls_ca", route.backend_ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


def _recording_callback(route_name: str) -> Callable:
    def remember(ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        record_sni(ssl_object, server_name, route_name)
    return remember


def sni_matches(patterns: Iterable[str], server_name: str | None) -> bool:
    """Case-insensitive glob match of an SNI value (a trailing dot is ignored)."""
    if not server_name:
        return False
    name = server_name.rstrip(".").lower()
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in patterns)


def route_for_sni(routes: Sequence[RouteTLS], server_name: str | None) -> RouteTLS:
    """The first route whose `sni` globs match; the first route when none does or no SNI was sent."""
    for route in routes:
        if sni_matches(route.sni, server_name):
            return route
    return routes[0]


def build_listener_context(routes: Sequence[RouteTLS]) -> ssl.SSLContext:
    """One context for a listener whose terminating routes are told apart by SNI.

    Its sni_callback switches to the chosen route's context (certificate, ALPN, client CA store) and
    records (server_name, route name) for `TLSEngine.sni` / `TLSEngine.route`. Raises TLSConfigError
    when the routes disagree on a setting an SNI switch cannot carry.
    """
    terminating = [route for route in routes if route.terminates]
    if not terminating:
        raise TLSConfigError("tls_cert", "no terminating route on this listener")
    for route_name, key, message in check_listener_tls(terminating):
        raise TLSConfigError(key, f"route {route_name!r}: {message}")
    choices = [(route, server_context(route)) for route in terminating]
    listener = server_context(terminating[0])
    listener.sni_callback = _switching_callback(choices)
    return listener


def _switching_callback(choices: list[tuple[RouteTLS, ssl.SSLContext]]) -> Callable:
    routes = [route for route, _ in choices]
    by_name = {route.name: ctx for route, ctx in choices}

    def switch(ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        route = route_for_sni(routes, server_name)
        record_sni(ssl_object, server_name, route.name)
        ssl_object.context = by_name[route.name]
    return switch
