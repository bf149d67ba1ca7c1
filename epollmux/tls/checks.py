"""The problems `--check` reports for a route's TLS keys, as (key, message) pairs.

Owns: `check_route_tls`: every problem at once (not the first only, as building a context does),
including those only a check looks for: keys that need another key, expired or not yet valid
certificates, tls_ciphers that cannot apply, a unix: backend without backend_sni.
Must not import: socket, the reactor, the connection, configobj or the config module.
"""

from __future__ import annotations

import ssl
import time
from typing import Any, Callable, Mapping

from epollmux.tls.options import (BACKEND_TLS_ONLY, TERMINATING_ONLY, Problem, RouteTLS, TLSConfigError,
                                  as_text, check_dates, check_hostname_value, decode_cert, load_ca,
                                  load_identity, parse, set_alpn, set_ciphers)


def check_route_tls(opts: Mapping[str, Any], now: float | None = None) -> list[Problem]:
    """Every problem with a route's TLS keys, as (key, message); [] when they are usable."""
    route, problems = parse("check", opts)
    now = time.time() if now is None else now
    problems += _check_coherence(route, opts)
    checks: list[Callable[[], None]] = []
    if route.terminates:
        checks += [lambda: decode_cert("tls_cert", route.cert), lambda: _check_cert_dates(route, now),
                   lambda: load_identity(_scratch(), route.cert, route.key),
                   lambda: _check_ciphers(route), lambda: set_alpn(_scratch(), route.alpn)]
        if route.client_ca:
            checks.append(lambda: load_ca(_scratch(), "tls_client_ca", route.client_ca))
    if route.backend_tls:
        checks += [lambda: _check_backend_ca(route), lambda: _check_backend_sni(route)]
    for check in checks:
        try:
            check()
        except TLSConfigError as exc:
            problem = (exc.key, exc.message)
            if problem not in problems:
                problems.append(problem)
    return problems


def _scratch() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


def _check_coherence(route: RouteTLS, opts: Mapping[str, Any]) -> list[Problem]:
    problems = []
    if not route.terminates:
        problems += [(key, "needs tls_cert (this route does not terminate TLS)")
                     for key in TERMINATING_ONLY if as_text(opts.get(key)) is not None]
    if not route.backend_tls:
        problems += [(key, "needs backend_tls = yes")
                     for key in BACKEND_TLS_ONLY if as_text(opts.get(key)) is not None]
    return problems


def _check_cert_dates(route: RouteTLS, now: float) -> None:
    check_dates("tls_cert", route.cert, decode_cert("tls_cert", route.cert), now)


def _check_ciphers(route: RouteTLS) -> None:
    if not route.ciphers:
        return
    set_ciphers(_scratch(), route.ciphers)
    if route.min_version == "1.3":
        raise TLSConfigError("tls_ciphers", "has no effect with tls_min_version = 1.3 "
                             "(TLS 1.3 suites cannot be chosen from Python)")


def _check_backend_ca(route: RouteTLS) -> None:
    if route.backend_ca:
        load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "backend_tls_ca", route.backend_ca)


def _check_backend_sni(route: RouteTLS) -> None:
    if route.backend_sni:
        check_hostname_value("backend_sni", route.backend_sni)
    elif (route.backend or "").startswith("unix:"):
        raise TLSConfigError("backend_sni", "required with backend_tls to a unix: backend")
