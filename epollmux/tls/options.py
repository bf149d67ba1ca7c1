"""The TLS keys of a route: typed once (`RouteTLS`), and the steps both building a context and
checking one take, each raising `TLSConfigError(key, message)`.

Owns: parsing the route keys sni, tls_cert, tls_key, tls_min_version, tls_ciphers, tls_alpn,
tls_client_ca, tls_resumption, backend_tls, backend_tls_ca, backend_sni (and backend, to spot
`unix:` backends); reading certificates, keys and CA files into a context; the rule that routes
sharing one SNI-switching listener context agree on what a switch cannot carry (`check_listener_tls`,
see `contexts.py`'s docstring for why).
Must not import: socket, the reactor, the connection, configobj or the config module (it receives
plain mappings and values), or any third-party package.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}
TERMINATING_ONLY = ("tls_key", "tls_min_version", "tls_ciphers", "tls_alpn", "tls_client_ca",
                     "tls_resumption")
BACKEND_TLS_ONLY = ("backend_tls_ca", "backend_sni")
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

def as_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())


def as_bool(key: str, value: Any, default: bool) -> bool:
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


def as_text(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def min_version_value(value: Any) -> str:
    text = as_text(value) or "1.2"
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
        route, problems = parse(name, opts)
        if problems:
            raise TLSConfigError(*problems[0])
        return route


def parse(name: str, opts: Mapping[str, Any]) -> tuple[RouteTLS, list[Problem]]:
    problems: list[Problem] = []

    def guarded(parse: Callable[[], Any], default: Any) -> Any:
        try:
            return parse()
        except TLSConfigError as exc:
            problems.append((exc.key, exc.message))
            return default

    route = RouteTLS(
        name=name,
        sni=as_list(opts.get("sni")),
        cert=as_text(opts.get("tls_cert")),
        key=as_text(opts.get("tls_key")),
        min_version=guarded(lambda: min_version_value(opts.get("tls_min_version")), "1.2"),
        ciphers=as_text(opts.get("tls_ciphers")),
        alpn=as_list(opts.get("tls_alpn")),
        client_ca=as_text(opts.get("tls_client_ca")),
        resumption=guarded(lambda: as_bool("tls_resumption", opts.get("tls_resumption"), True), True),
        backend_tls=guarded(lambda: as_bool("backend_tls", opts.get("backend_tls"), False), False),
        backend_ca=as_text(opts.get("backend_tls_ca")),
        backend_sni=as_text(opts.get("backend_sni")),
        backend=as_text(opts.get("backend")),
    )
    return route, problems


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



# -- steps shared by building and checking: each raises TLSConfigError(key, message) -------------------

def readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise TLSConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def decode_cert(key: str, path: str) -> dict:
    readable(key, path)
    try:
        return ssl._ssl._test_decode_cert(path)   # the first certificate in the file; no new dependency
    except (ssl.SSLError, ValueError):
        raise TLSConfigError(key, f"{path} holds no PEM certificate") from None


def check_dates(key: str, path: str, decoded: dict, now: float) -> None:
    not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
    not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    if now > not_after:
        raise TLSConfigError(key, f"{path} expired on {decoded['notAfter']}")
    if now < not_before:
        raise TLSConfigError(key, f"{path} is not valid before {decoded['notBefore']}")


def load_identity(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    decode_cert("tls_cert", cert)
    if key is not None:
        readable("tls_key", key)
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


def load_ca(ctx: ssl.SSLContext, key: str, path: str) -> None:
    readable(key, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError, ValueError):
        raise TLSConfigError(key, f"{path} holds no PEM CA certificate") from None


def set_ciphers(ctx: ssl.SSLContext, ciphers: str) -> None:
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        raise TLSConfigError("tls_ciphers", f"no usable TLS <= 1.2 cipher in {ciphers!r}") from None


def set_alpn(ctx: ssl.SSLContext, protocols: Sequence[str]) -> None:
    for protocol in protocols:
        encoded = protocol.encode("ascii", "replace")
        if not 1 <= len(encoded) <= 255 or not protocol.isascii():
            raise TLSConfigError("tls_alpn", f"{protocol!r} is not a 1..255 byte ASCII protocol name")
    ctx.set_alpn_protocols(list(protocols))


def check_hostname_value(key: str, name: str) -> None:
    if len(name) > 253 or not name or any(c in name for c in " */:\\") or name.startswith("."):
        raise TLSConfigError(key, f"{name!r} is not a host name")
