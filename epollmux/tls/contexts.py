"""TLS contexts built from route options, and the checks `--check` runs on those options.

Owns: turning a route's TLS keys into `ssl.SSLContext`s (terminating side, backend side, and one
SNI-switching context per listener), SNI glob matching, and the (key, message) problems for every TLS key.
Contexts are built once per config load, before the workers fork, so all workers share ticket keys.

Must not import: socket, the reactor, the connection, configobj or the config module (it receives plain
mappings and values), or any third-party package. It imports `tlsengine` only for `record_sni`.

Route keys read here: sni, tls_cert, tls_key, tls_min_version, tls_ciphers, tls_alpn, tls_client_ca,
tls_resumption, backend_tls, backend_tls_ca, backend_sni (and backend, to spot `unix:` backends).

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
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from epollmux.tls.engine import record_sni

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}
_TERMINATING_ONLY = ("tls_key", "tls_min_version", "tls_ciphers", "tls_alpn", "tls_client_ca",
                     "tls_resumption")
_BACKEND_TLS_ONLY = ("backend_tls_ca", "backend_sni")
# Settings an SNI switch does not carry (see the module docstring).
_LISTENER_WIDE = (("min_version", "tls_min_version"), ("ciphers", "tls_ciphers"),
                  ("client_ca", "tls_client_ca"), ("resumption", "tls_resumption"))

Problem = tuple[str, str]


class TLSConfigError(ValueError):
    """One bad TLS option: `key` is the config key, `message` says what is wrong with it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class _EncryptedKey(Exception):
    pass


def _refuse_passphrase() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    raise _EncryptedKey()


# -- option values -----------------------------------------------------------------------------------

def _as_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())


def _as_bool(key: str, value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TLSConfigError(key, f"{value!r} is not yes or no")


def _as_text(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _min_version_value(value: Any) -> str:
    text = _as_text(value) or "1.2"
    if text not in MIN_VERSIONS:
        raise TLSConfigError("tls_min_version", f"{value!r} is not one of {', '.join(MIN_VERSIONS)}")
    return text


@dataclass(frozen=True)
class RouteTLS:
    """The TLS options of one route, already typed. `terminates` when it has a certificate."""

    name: str
    sni: tuple[str, ...] = ()
    cert: str | None = None
    key: str | None = None
    min_version: str = "1.2"
    ciphers: str | None = None
    alpn: tuple[str, ...] = ()
    client_ca: str | None = None
    resumption: bool = True
    backend_tls: bool = False
    backend_ca: str | None = None
    backend_sni: str | None = None
    backend: str | None = field(default=None, compare=False)

    @property
    def terminates(self) -> bool:
        return self.cert is not None

    @classmethod
    def from_options(cls, name: str, opts: Mapping[str, Any]) -> "RouteTLS":
        """Typed options from a route's section; raises TLSConfigError on the first bad value."""
        route, problems = _parse(name, opts)
        if problems:
            raise TLSConfigError(*problems[0])
        return route


def _parse(name: str, opts: Mapping[str, Any]) -> tuple[RouteTLS, list[Problem]]:
    problems: list[Problem] = []

    def guarded(parse: Callable[[], Any], default: Any) -> Any:
        try:
            return parse()
        except TLSConfigError as exc:
            problems.append((exc.key, exc.message))
            return default

    route = RouteTLS(
        name=name,
        sni=_as_list(opts.get("sni")),
        cert=_as_text(opts.get("tls_cert")),
        key=_as_text(opts.get("tls_key")),
        min_version=guarded(lambda: _min_version_value(opts.get("tls_min_version")), "1.2"),
        ciphers=_as_text(opts.get("tls_ciphers")),
        alpn=_as_list(opts.get("tls_alpn")),
        client_ca=_as_text(opts.get("tls_client_ca")),
        resumption=guarded(lambda: _as_bool("tls_resumption", opts.get("tls_resumption"), True), True),
        backend_tls=guarded(lambda: _as_bool("backend_tls", opts.get("backend_tls"), False), False),
        backend_ca=_as_text(opts.get("backend_tls_ca")),
        backend_sni=_as_text(opts.get("backend_sni")),
        backend=_as_text(opts.get("backend")),
    )
    return route, problems


# -- steps shared by building and checking: each raises TLSConfigError(key, message) -------------------

def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise TLSConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def _decode_cert(key: str, path: str) -> dict:
    _readable(key, path)
    try:
        return ssl._ssl._test_decode_cert(path)   # the first certificate in the file; no new dependency
    except (ssl.SSLError, ValueError):
        raise TLSConfigError(key, f"{path} holds no PEM certificate") from None


def _check_dates(key: str, path: str, decoded: dict, now: float) -> None:
    not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
    not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    if now > not_after:
        raise TLSConfigError(key, f"{path} expired on {decoded['notAfter']}")
    if now < not_before:
        raise TLSConfigError(key, f"{path} is not valid before {decoded['notBefore']}")


def _load_identity(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    _decode_cert("tls_cert", cert)
    if key is not None:
        _readable("tls_key", key)
    try:
        ctx.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _EncryptedKey:
        raise TLSConfigError("tls_key", "the private key is encrypted; passphrases are not supported") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError("tls_key", f"does not match the certificate in {cert}") from None
        if key is None:
            raise TLSConfigError("tls_key", f"not set, and {cert} holds no private key") from None
        raise TLSConfigError("tls_key", f"{key} holds no usable PEM private key") from None


def _load_ca(ctx: ssl.SSLContext, key: str, path: str) -> None:
    _readable(key, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError, ValueError):
        raise TLSConfigError(key, f"{path} holds no PEM CA certificate") from None


def _set_ciphers(ctx: ssl.SSLContext, ciphers: str) -> None:
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        raise TLSConfigError("tls_ciphers", f"no usable TLS <= 1.2 cipher in {ciphers!r}") from None


def _set_alpn(ctx: ssl.SSLContext, protocols: Sequence[str]) -> None:
    for protocol in protocols:
        encoded = protocol.encode("ascii", "replace")
        if not 1 <= len(encoded) <= 255 or not protocol.isascii():
            raise TLSConfigError("tls_alpn", f"{protocol!r} is not a 1..255 byte ASCII protocol name")
    ctx.set_alpn_protocols(list(protocols))


def _check_hostname_value(key: str, name: str) -> None:
    if len(name) > 253 or not name or any(c in name for c in " */:\\") or name.startswith("."):
        raise TLSConfigError(key, f"{name!r} is not a host name")


# -- contexts ------------------------------------------------------------------------------------------

def server_context(route: RouteTLS) -> ssl.SSLContext:
    """The terminating context of one route: every per-route option applies when used directly."""
    if not route.terminates:
        raise TLSConfigError("tls_cert", f"route {route.name!r} does not terminate TLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[_min_version_value(route.min_version)]
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if route.ciphers:
        _set_ciphers(ctx, route.ciphers)
    _load_identity(ctx, route.cert, route.key)
    if route.alpn:
        _set_alpn(ctx, route.alpn)
    if route.client_ca:
        _load_ca(ctx, "tls_client_ca", route.client_ca)
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
    if route.backend_ca:
        _load_ca(ctx, "backend_tls_ca", route.backend_ca)
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


# -- checks for --check ----------------------------------------------------------------------------------

def check_listener_tls(routes: Sequence[RouteTLS]) -> list[tuple[str, str, str]]:
    """(route, key, message) for terminating routes on one listener that differ from the first one."""
    terminating = [route for route in routes if route.terminates]
    problems = []
    for route in terminating[1:]:
        first = terminating[0]
        for attribute, key in _LISTENER_WIDE:
            if _listener_value(first, attribute) != _listener_value(route, attribute):
                problems.append((route.name, key, f"differs from route {first.name!r} on the same listener; "
                                 "an SNI switch carries only the certificate, ALPN and client CA store"))
    return problems


def _listener_value(route: RouteTLS, attribute: str) -> Any:
    value = getattr(route, attribute)
    return os.path.abspath(value) if attribute == "client_ca" and value else value


def check_route_tls(opts: Mapping[str, Any], now: float | None = None) -> list[Problem]:
    """Every problem with a route's TLS keys, as (key, message); [] when they are usable."""
    route, problems = _parse("check", opts)
    now = time.time() if now is None else now
    problems += _check_coherence(route, opts)
    checks: list[Callable[[], None]] = []
    if route.terminates:
        checks += [lambda: _decode_cert("tls_cert", route.cert), lambda: _check_cert_dates(route, now),
                   lambda: _load_identity(_scratch(), route.cert, route.key),
                   lambda: _check_ciphers(route), lambda: _set_alpn(_scratch(), route.alpn)]
        if route.client_ca:
            checks.append(lambda: _load_ca(_scratch(), "tls_client_ca", route.client_ca))
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
                     for key in _TERMINATING_ONLY if _as_text(opts.get(key)) is not None]
    if not route.backend_tls:
        problems += [(key, "needs backend_tls = yes")
                     for key in _BACKEND_TLS_ONLY if _as_text(opts.get(key)) is not None]
    return problems


def _check_cert_dates(route: RouteTLS, now: float) -> None:
    _check_dates("tls_cert", route.cert, _decode_cert("tls_cert", route.cert), now)


def _check_ciphers(route: RouteTLS) -> None:
    if not route.ciphers:
        return
    _set_ciphers(_scratch(), route.ciphers)
    if route.min_version == "1.3":
        raise TLSConfigError("tls_ciphers", "has no effect with tls_min_version = 1.3 "
                             "(TLS 1.3 suites cannot be chosen from Python)")


def _check_backend_ca(route: RouteTLS) -> None:
    if route.backend_ca:
        _load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "backend_tls_ca", route.backend_ca)


def _check_backend_sni(route: RouteTLS) -> None:
    if route.backend_sni:
        _check_hostname_value("backend_sni", route.backend_sni)
    elif (route.backend or "").startswith("unix:"):
        raise TLSConfigError("backend_sni", "required with backend_tls to a unix: backend")

