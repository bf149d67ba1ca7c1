"""Reads and validates the configuration file; the only module that imports configobj.

Owns: the typed configuration (`Config`, `Settings`, `Listener`, `Route`), loading a file or a
dict (the command-line mode builds one), and every error message, each in the form
"FILE: [section] key: message". Validation is complete: all problems are reported, not the first.
Must not import: `cli`, `observe`, `process`, `reactor`, `relay`, `serve`, `sslh`, `tools`; opens no sockets, starts nothing.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, fields
from functools import cached_property
from importlib import resources
from typing import Any

from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values
from validate import Validator

from epollmux import acl, addr
from epollmux.configproblems import Problems, spec_keys, syntax_problems, value_message
from epollmux.wire import probes, udpprobes, udpsniff
from epollmux.tls import checks as tlschecks
from epollmux.tls import contexts as tlsctx


class ConfigError(Exception):
    """Raised with every problem found; str() is one problem per line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    workers: int
    probe_timeout: float
    tls_handshake_timeout: float
    on_timeout: str
    max_probe_bytes: int
    max_probe_edges: int
    connect_timeout: float
    idle_timeout: float
    tcp_keepalive: bool
    tcp_keepalive_idle: int
    tcp_keepalive_interval: int
    tcp_keepalive_count: int
    tcp_user_timeout: float
    drain_timeout: float
    reload_drain_timeout: float
    stop_delay: float
    max_connections: int
    max_connections_per_source: int
    max_sniffing_per_source: int
    rate_per_source: float
    source_ipv6_prefix: int
    relay: str
    pipe_size: int
    max_pipes: int
    user: str
    group: str
    log_level: str
    log_target: str
    log_format: str
    max_flows: int
    max_flows_per_source: int


@dataclass(eq=False)
class Route:
    name: str
    probe: str
    backend: addr.Address | None        # None only on a route whose inner_routes decide
    opts: dict[str, Any] = field(default_factory=dict)   # prepared probe options
    server_context: ssl.SSLContext | None = None          # set: this route terminates TLS
    backend_context: ssl.SSLContext | None = None         # set: TLS towards the backend
    backend_sni: str | None = None
    send_proxy: str | None = None                          # v1 | v2
    send_proxy_crc: bool = False
    transparent: bool = False
    access: acl.Access | None = None                       # None: everyone
    max_connections: int = 0
    drain_timeout: float | None = None                    # None: the global drain_timeout / reload_drain_timeout
    inner_names: tuple[str, ...] = ()
    inner_routes: tuple["Route", ...] = ()                # sniffed inside the decrypted stream
    inner_on_timeout: "Route | None" = None
    udp: bool = False                                      # a UDP route: its flows go to a UDP backend
    udp_idle_timeout: float = 0.0                          # UDP: seconds without a datagram either way

    @cached_property
    def inner_table(self) -> tuple[tuple[str, dict], ...]:
        return tuple((r.probe, r.opts) for r in self.inner_routes)


@dataclass(frozen=True)
class Listener:
    name: str
    addresses: tuple[addr.Address, ...]
    routes: tuple[Route, ...]
    on_timeout: Route | None
    proxy_protocol: str = "none"
    trusted: acl.CIDRList | None = None
    access: acl.Access | None = None
    max_connections: int = 0
    udp: bool = False                      # every address is udp:host:port

    @cached_property
    def probe_table(self) -> tuple[tuple[str, dict], ...]:
        """(probe, options) per route, in order: what the sniffer decides on."""
        return tuple((r.probe, r.opts) for r in self.routes)


@dataclass(frozen=True)
class MetricsSettings:
    address: addr.Address | None = None     # Prometheus over HTTP; None = off
    stats_socket: str = ""                  # unix socket answering `show stat` / `show conns`; "" = off


@dataclass(frozen=True)
class Config:
    source: str
    settings: Settings
    listeners: tuple[Listener, ...]
    routes: dict[str, Route]
    metrics: MetricsSettings = MetricsSettings()


def spec_lines() -> list[str]:
    return resources.files("epollmux").joinpath("configspec.ini").read_text().splitlines()


def load_file(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    return _build(path, lines)


def load_dict(source: str, data: dict) -> Config:
    """Validate a configuration given as nested dicts (used by the command-line mode)."""
    return _build(source, data)


def _build(source: str, data) -> Config:
    try:
        cfg = ConfigObj(data, configspec=spec_lines(), interpolation=False, list_values=True,
                        raise_errors=False)
    except ConfigObjError as exc:
        raise ConfigError(syntax_problems(source, exc, data if isinstance(data, list) else [])) from None
    problems = Problems(source)
    result = cfg.validate(Validator(), preserve_errors=True)
    for sections, key, error in flatten_errors(cfg, result):
        if key is None:
            problems.add(sections, "", "missing section")
        elif error is False:
            problems.add(sections, key, "is required")
        else:
            problems.add(sections, key, value_message(cfg, sections, key, error))
    problems.add_unknown(cfg, get_extra_values(cfg))
    try:
        config = _typed(source, cfg, problems)
    except (KeyError, TypeError, ValueError, AttributeError):
        if not problems.items:      # only a value already reported as wrong may break typing
            raise
    if problems.items:
        raise ConfigError(problems.items)
    return config


def _typed(source: str, cfg, problems: Problems) -> Config:
    settings = _settings(cfg["global"], problems)
    udp_named = {name for section in cfg["listen"].values() if _all_udp(section["address"])
                 for name in section["routes"]}
    routes = {}
    for name, section in cfg["routes"].items():
        route = _route(name, section, problems, name in udp_named)
        if route is not None:
            routes[name] = route
    if not cfg["routes"]:
        problems.add(["routes"], "", "define at least one route")
    listeners = [_listener(name, section, routes, cfg["routes"], settings, problems)
                 for name, section in cfg["listen"].items()]
    if not cfg["listen"]:
        problems.add(["listen"], "", "define at least one listener")
    if settings.on_timeout and settings.on_timeout not in cfg["routes"]:
        problems.add(["global"], "on_timeout", f"no route named '{settings.on_timeout}'")
    for route in routes.values():
        if route.inner_names:
            _resolve_inner(route, routes, cfg["routes"], settings, problems)
    return Config(source, settings, tuple(listeners), routes, _metrics(cfg["metrics"], problems))


SUN_PATH_MAX = 107      # bytes of a unix socket path, without the terminating NUL


def _metrics(section, problems: Problems) -> MetricsSettings:
    where = ["metrics"]
    address = None
    if section["address"].strip():
        try:
            address = addr.parse(section["address"])
            if address.family == addr.socket.AF_UNIX:
                problems.add(where, "address", f"'{section['address']}': takes host:port or [v6]:port")
                address = None
        except ValueError as exc:
            problems.add(where, "address", str(exc))
    path = section["stats_socket"].strip()
    if path:
        if not path.startswith("/"):
            problems.add(where, "stats_socket", f"'{path}': must be an absolute path")
        elif len(path.encode()) > SUN_PATH_MAX:
            problems.add(where, "stats_socket", f"'{path}': longer than {SUN_PATH_MAX} bytes")
        elif not os.path.isdir(os.path.dirname(os.path.dirname(path)) or "/"):   # the daemon makes the last one
            problems.add(where, "stats_socket", f"'{path}': directory {os.path.dirname(path)} does not exist")
    return MetricsSettings(address, path)


def _settings(section, problems: Problems) -> Settings:
    values = {f.name: section[f.name] for f in fields(Settings)}
    workers = values["workers"].strip().lower()
    if workers == "auto":
        values["workers"] = os.cpu_count() or 1
    elif workers.isascii() and workers.isdigit() and 1 <= int(workers) <= 256:      # not "²" (isdigit, not int)
        values["workers"] = int(workers)
    else:
        problems.add(["global"], "workers", f"'{workers}' is not 'auto' or a number from 1 to 256")
        values["workers"] = 1
    return Settings(**values)


def _written(section) -> dict:
    """A route's keys as written: no defaults, probe, backend, or keys the spec lacks (reported as unknown)."""
    known = set(spec_keys(section)) - set(section.defaults) - {"probe", "backend"}
    return {k: v for k, v in section.items() if k in known}


def _all_udp(addresses) -> bool:
    return bool(addresses) and all(a.strip().startswith("udp:") for a in addresses)


def _route(name: str, section, problems: Problems, udp_named: bool) -> Route | None:
    where = ["routes", name]
    probe = section["probe"]
    backend_text = (section["backend"] or "").strip()
    if backend_text.startswith("udp:") or probe in udpsniff.UDP_ONLY or udp_named:
        return _udp_route(name, section, problems)
    spec = probes.PROBES.get(probe)
    if spec is None:
        problems.add(where, "probe", f"unknown probe '{probe}' (known: {', '.join(sorted(probes.PROBES))})")
        return None
    written = _written(section)
    allowed = spec.keys | ROUTE_KEYS | BACKEND_TLS_KEYS | (TERMINATING_KEYS if probe in TERMINATING_PROBES else frozenset())
    for key in sorted(set(written) - allowed):
        what = "applies to UDP routes only" if key in UDP_ROUTE_KEYS else f"does not apply to probe '{probe}'"
        problems.add(where, key, what)
    opts = _options(where, probes.prepare_options, probe, written, spec.keys, problems)
    inner = tuple(written.get("inner_routes") or ())
    backend = None
    if section["backend"] is None:
        if not inner:
            problems.add(where, "backend", "is required")
    else:
        try:
            backend = addr.parse(section["backend"])
        except ValueError as exc:
            problems.add(where, "backend", str(exc))
            return None
    route = Route(name, probe, backend, opts, inner_names=inner,
                  send_proxy=written.get("send_proxy"), send_proxy_crc=bool(written.get("send_proxy_crc")),
                  transparent=bool(written.get("transparent")), max_connections=written.get("max_connections") or 0,
                  drain_timeout=written.get("drain_timeout"),
                  access=_access(where, written.get("allow"), written.get("deny"), problems))
    if route.send_proxy_crc and route.send_proxy != "v2":
        problems.add(where, "send_proxy_crc", "needs send_proxy = v2")
    if route.transparent and backend is not None and backend.family == addr.socket.AF_UNIX:
        problems.add(where, "transparent", "needs a TCP backend")
    _route_tls(route, {k: v for k, v in section.items() if k in allowed or k == "backend"}, problems)
    return route


def _options(where: list, prepare, probe: str, written: dict, keys, problems: Problems) -> dict:
    """A probe's options prepared from the keys written for it ({} with each problem reported by key)."""
    try:
        return prepare(probe, {k: v for k, v in written.items() if k in keys})
    except ValueError as exc:
        key, message = exc.args if len(exc.args) == 2 else ("probe", str(exc))
        problems.add(where, key, message)
        return {}


UDP_ROUTE_KEYS = frozenset({"udp_idle_timeout"})
UDP_COMMON_KEYS = frozenset({"allow", "deny", "drain_timeout"})
UDP_IDLE_DEFAULT = 60.0
UDP_IDLE_DEFAULTS = {"quic": 30.0}          # QUIC's own idle timeout is usually 30 s


def _udp_route(name: str, section, problems: Problems) -> Route | None:
    """A route whose flows are datagrams: its probe must be a UDP probe, its backend a UDP address, and
    the TCP-only keys (TLS termination, PROXY headers, transparent, ...) are refused."""
    where = ["routes", name]
    probe = section["probe"]
    spec = udpprobes.UDP_PROBES.get(probe)
    why = "its backend is udp:" if (section["backend"] or "").strip().startswith("udp:") else \
        "a UDP listener names it"
    if spec is None:
        problems.add(where, "probe", f"'{probe}' is a TCP probe, and this is a UDP route ({why}): "
                                     f"UDP routes take {', '.join(sorted(udpprobes.UDP_PROBES))}")
        return None
    written = _written(section)
    allowed = spec.keys | UDP_ROUTE_KEYS | UDP_COMMON_KEYS
    for key in sorted(set(written) - allowed):
        problems.add(where, key, f"does not apply to a UDP route (probe '{probe}')")
    opts = _options(where, udpprobes.prepare_udp_options, probe, written, spec.keys, problems)
    backend = None
    text = (section["backend"] or "").strip()
    if not text:
        problems.add(where, "backend", "is required")
    else:
        try:
            backend = addr.parse(text if text.startswith("udp:") else "udp:" + text)
        except ValueError as exc:
            problems.add(where, "backend", str(exc).replace("'udp:" + text + "'", f"'{text}'"))
            return None
    idle = written.get("udp_idle_timeout")
    if idle is None:
        idle = UDP_IDLE_DEFAULTS.get(probe, UDP_IDLE_DEFAULT)
    return Route(name, probe, backend, opts, udp=True, udp_idle_timeout=idle,
                 drain_timeout=written.get("drain_timeout"),
                 access=_access(where, written.get("allow"), written.get("deny"), problems))


ROUTE_KEYS = frozenset({"send_proxy", "send_proxy_crc", "transparent", "allow", "deny", "max_connections",
                        "drain_timeout"})
TERMINATING_PROBES = frozenset({"tls", "any"})
TERMINATING_KEYS = frozenset({"tls_cert", "tls_key", "tls_min_version", "tls_ciphers", "tls_alpn",
                              "tls_client_ca", "tls_resumption", "inner_routes"})
BACKEND_TLS_KEYS = frozenset({"backend_tls", "backend_tls_ca", "backend_sni"})


def _route_tls(route: Route, opts: dict, problems: Problems) -> None:
    """Check the route's TLS keys (files, dates, key match) and build its contexts, once per load."""
    where = ["routes", route.name]
    if opts.get("inner_routes") and not opts.get("tls_cert"):
        problems.add(where, "inner_routes", "needs tls_cert (only a terminating route sees inside)")
    found = tlschecks.check_route_tls(opts)
    for key, message in found:
        problems.add(where, key, message)
    if found:
        return
    tls = tlsctx.RouteTLS.from_options(route.name, opts)
    if tls.terminates:
        route.server_context = tlsctx.server_context(tls)
    if tls.backend_tls:
        route.backend_context = tlsctx.backend_context(tls)
        host = route.backend.text.rsplit(":", 1)[0].strip("[]") if route.backend else None
        route.backend_sni = tls.backend_sni or host


def _resolve_inner(route: Route, routes: dict, raw_routes, settings: Settings, problems: Problems) -> None:
    where = ["routes", route.name]
    inner = []
    for name in route.inner_names:
        if name not in raw_routes:
            problems.add(where, "inner_routes", f"no route named '{name}'")
        elif name in routes:
            other = routes[name]
            if other.server_context is not None or other.inner_names:
                problems.add(where, "inner_routes", f"route '{name}' terminates TLS itself; inner routes forward")
            inner.append(other)
    _check_any_last(where, "inner_routes", inner, problems)
    route.inner_routes = tuple(inner)
    route.inner_on_timeout = routes.get(settings.on_timeout) if settings.on_timeout in route.inner_names else None


def _access(where, allow, deny, problems: Problems) -> acl.Access | None:
    """allow/deny CIDR lists; None when neither is set (everyone gets in)."""
    if not allow and not deny:
        return None
    lists = {}
    for key, value in (("allow", allow), ("deny", deny)):
        try:
            lists[key] = acl.CIDRList.parse(value) if value else None
        except ValueError as exc:
            problems.add(where, key, str(exc))
            lists[key] = None
    return acl.Access(lists["allow"], lists["deny"])


def _check_any_last(where, key: str, chosen: list[Route], problems: Problems) -> None:
    for i, route in enumerate(chosen[:-1]):
        if route.probe == "any":
            unreachable = ", ".join(r.name for r in chosen[i + 1:])
            problems.add(where, key, f"route '{route.name}' (probe any) takes every client, so "
                                     f"{unreachable} can never be chosen; put it last")
            return


def _listener(name, section, routes, raw_routes, settings, problems: Problems) -> Listener:
    where = ["listen", name]
    udp = _all_udp(section["address"])
    if not udp and any(a.strip().startswith("udp:") for a in section["address"]):
        problems.add(where, "address", "mixes TCP and udp: addresses; a listener is all TCP or all UDP "
                                       "(write two listener sections to serve both on one port)")
    addresses = []
    for text in section["address"]:
        try:
            address = addr.parse(text)
        except ValueError as exc:
            problems.add(where, "address", str(exc))
            continue
        if address.family == addr.socket.AF_UNIX:
            problems.add(where, "address", f"'{text}': listeners take host:port or [v6]:port")
        addresses.append(address)
    explicit = bool(section["routes"])
    names = section["routes"] or [n for n in raw_routes if n not in routes or routes[n].udp == udp]
    chosen = []
    for route_name in names:
        if route_name not in raw_routes:
            problems.add(where, "routes", f"no route named '{route_name}'")
        elif route_name in routes:
            route = routes[route_name]
            if explicit and route.udp != udp:
                problems.add(where, "routes", f"route '{route_name}' is a UDP route (probe {route.probe}, "
                                              f"backend {route.backend}) and this listener is TCP: a UDP "
                                              "route needs a listener of udp: addresses")
                continue
            chosen.append(route)
    if len(set(names)) != len(names):
        problems.add(where, "routes", "a route is named twice")
    _check_any_last(where, "routes", chosen, problems)
    on_timeout = routes.get(settings.on_timeout)
    if on_timeout is not None and on_timeout not in chosen:
        on_timeout = None   # the listener does not carry that route: silent clients are closed
    trusted = None
    if section["trusted"]:
        try:
            trusted = acl.CIDRList.parse(section["trusted"])
        except ValueError as exc:
            problems.add(where, "trusted", str(exc))
    if udp and section["proxy_protocol"] != "none":
        problems.add(where, "proxy_protocol", "a UDP listener takes no PROXY header (TCP only)")
    elif section["proxy_protocol"] != "none" and not section["trusted"]:
        problems.add(where, "trusted", "required with proxy_protocol: the sources allowed to send a header")
    if section["trusted"] and section["proxy_protocol"] == "none" and not udp:
        problems.add(where, "trusted", "only means something with proxy_protocol")
    return Listener(name, tuple(addresses), tuple(chosen), on_timeout, section["proxy_protocol"], trusted,
                    _access(where, section["allow"], section["deny"], problems), section["max_connections"], udp)
