"""Turns the sslh Model into epollmux's own configuration, so the config module validates and runs it.

Owns: the mapping of every sslh setting (see options.OPTIONS) to epollmux keys, sslh's routing rules
expressed in epollmux terms (what no probe recognises goes to the last protocol of its kind, TCP or
`is_udp`; a silent client goes to
the first protocol named by on-timeout, else the first one), the notices for settings without effect,
the way back from an epollmux problem (`[routes.tls2] sni`) to the sslh place (`[protocols.3]
sni_hostnames`), and `render()`, the equivalent epollmux.conf that --print-config prints.
Must not import libconf, configobj, argparse or anything that serves connections.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field

from epollmux import config
from epollmux.sslh import options
from epollmux.sslh.model import Entry, Model, Problems

SOURCE = "\x00sslh"         # the source given to config.load_dict; its problems are remapped
SSLH_DEFAULT_TIMEOUT = 5     # sslh's probe timeout when none is given (epollmux's own default is 2)
# epollmux key -> the sslh key that set it, for messages
_BACK = {"backend": "host", "sni": "sni_hostnames", "alpn": "alpn_protocols", "regex": "regex_patterns",
         "min_length": "minlength", "send_proxy": "proxyprotocol", "probe": "name", "address": "host",
         "proxy_protocol": "proxyprotocol", "trusted": "proxyprotocol", "probe_timeout": "timeout",
         "on_timeout": "on-timeout", "udp_idle_timeout": "udp_timeout", "max_flows": "udp_max_connections"}
_NOTICE_WHEN = {"log_level": lambda v: v == 0, "numeric": lambda v: False}


@dataclass
class Translation:
    data: dict                          # epollmux configuration as nested dicts (config.load_dict)
    origin: dict[str, Entry] = field(default_factory=dict)    # "routes.ssh" / "listen.listen0" -> entry
    comments: dict[str, str] = field(default_factory=dict)    # same keys -> a comment for render()
    foreground: bool = False
    inetd: bool = False
    pidfile: str | None = None

    def places(self, problems: list[str]) -> list[tuple[str, str]]:
        """(section, epollmux key) of each problem line ("" when it names none)."""
        found = [re.match(r"^\x00sslh: \[([^\]]+)\](?: (\S+))?: ", line) for line in problems]
        return [(m.group(1), m.group(2) or "") if m else ("", "") for m in found]

    def remap_warnings(self, warnings: list[str]) -> list[str]:
        """checks' `SOURCE: warning: [routes.x] ...` lines, remapped like problems."""
        marker = f"{SOURCE}: warning: "
        lines = [f"{SOURCE}: {w[len(marker):]}" if w.startswith(marker) else w for w in warnings]
        return [re.sub(r"^([^:]*): ", r"\1: warning: ", line, count=1) for line in self.remap(lines)]

    def remap(self, problems: list[str]) -> list[str]:
        """epollmux's `SOURCE: [routes.x] key: msg` lines as `FILE: [protocols.N] sslh_key: msg`."""
        out = []
        for line in problems:
            m = re.match(r"^\x00sslh: \[([^\]]+)\](?: (\S+))?: (.*)$", line)
            if m is None:
                out.append(line.replace(SOURCE, "sslh"))
                continue
            section, key, message = m.groups()
            entry = self.origin.get(section)
            source, where = (entry.source, entry.where) if entry else ("sslh", section)
            message = re.sub(r"\[listen\.listen(\d+)\]", r"[listen.\1]", message)
            out.append(Problems.line(source, where, _BACK.get(key or "", key or ""), message))
        return out


def validate(out: Translation, problems: Problems) -> config.Config | None:
    """config.load_dict over the translation; its problems are added in sslh's terms, except those about
    an entry already reported (they would only repeat it)."""
    try:
        return config.load_dict(SOURCE, out.data)
    except config.ConfigError as exc:
        known = bool(problems.errors)
        for line, (section, key) in zip(out.remap(exc.problems), out.places(exc.problems)):
            entry = out.origin.get(section)
            if known and (entry is None or problems.has(entry.source, entry.where, _BACK.get(key, key))):
                continue
            problems.errors.append(line)
    return None


def named(cfg: config.Config, source: str) -> config.Config:
    return dataclasses.replace(cfg, source=source)


def translate(model: Model, problems: Problems) -> Translation:
    g = model.globals
    out = Translation({"global": {}, "listen": {}, "routes": {}})
    out.foreground, out.inetd, out.pidfile = bool(g.get("foreground")), bool(g.get("inetd")), g.get("pidfile")
    _globals(model, out, problems)
    for index, entry in enumerate(model.listen):
        _listen(f"listen{index}", entry, model, out, problems)
    if not model.listen and out.inetd:      # inetd passes the connection: a listener for the model only
        out.data["listen"]["inetd"] = {"address": ["127.0.0.1:0"]}
        out.comments["listen.inetd"] = "-i/--inetd: never bound, inetd passes the connection on stdin"
    elif not model.listen:
        problems.error(model.config_file or "command line", "global", "listen",
                       "no listen entry: give -p/--listen HOST:PORT or listen: ( { host: ...; port: ...; } )")
    names: list[tuple[str, Entry]] = []
    for entry in model.protocols:
        name = _route(entry, model, out, problems)
        if name is not None:
            names.append((name, entry))
    if not model.protocols:
        problems.error(model.config_file or "command line", "global", "protocols",
                       "no protocol: give --ssh/--tls/... HOST:PORT or protocols: ( { name: ...; ... } )")
    _order(names, out, problems)
    _on_timeout(model, names, out)
    if model.globals.get("udp_max_connections"):
        out.data["global"]["max_flows"] = str(model.globals["udp_max_connections"])
    if "max_flows" in out.data["global"] or any("max_connections" in section for section in (
            *out.data["listen"].values(), *out.data["routes"].values())):
        out.data["global"]["workers"] = "1"   # limits count per worker; sslh is one process
    return out


def _globals(model: Model, out: Translation, problems: Problems) -> None:
    g, glob = model.globals, out.data["global"]
    for key, value in g.items():
        option = options.find(options.GLOBAL, key)
        if option is not None and option.status == options.NOTICE and value not in (None, False, ""):
            problems.notice(model.global_where[key], "global", option.name, f"no effect: {option.equivalent}")
    glob["probe_timeout"] = str(g.get("timeout", SSLH_DEFAULT_TIMEOUT))
    if g.get("user"):
        glob["user"] = g["user"]
    glob["log_level"] = _log_level(g)
    logfile_bit = [k for k, v in g.items() if k.startswith("verbose") and isinstance(v, int) and v & 4]
    if logfile_bit:
        problems.notice(model.global_where[logfile_bit[0]], "global", logfile_bit[0].replace("_", "-"),
                        "value bit 4 (logfile): no effect, logs go to stderr or syslog")
    daemon = not (out.foreground or out.inetd)
    glob["log_target"] = "syslog" if daemon and g.get("syslog_facility") != "none" and \
        os.path.exists("/dev/log") else "stderr"


def _log_level(g: dict) -> str:
    if g.get("verbose") is not None:
        return "debug" if g["verbose"] > 0 else "warning"
    if any(g.get(f"verbose_{c.replace('-', '_')}", 0) > 0 for c in options.VERBOSE_DEBUG):
        return "debug"
    return "warning" if g.get("verbose_connections") == 0 else "info"


def _spec_type(section: str, key: str) -> str | None:
    """The configspec's type text for `key` in [section] (or its [[__many__]]), None when there is none."""
    current = None
    for line in config.spec_lines():
        text = line.strip()
        if re.match(r"^\[[a-z_]+\]$", text):
            current = text[1:-1]
        elif current == section and text.startswith(f"{key} ="):
            return text.split("=", 1)[1].strip()
    return None


def _keepalive(entry: Entry, section: dict, out: Translation, spec_section: str) -> bool:
    """sslh's keepalive as epollmux's boolean `tcp_keepalive` where the config has it (here, else
    [global]); False when it has none (the option then gets its notice)."""
    if not entry.keys.get("keepalive"):
        return False
    for where, target in ((spec_section, section), ("global", out.data["global"])):
        if (_spec_type(where, "tcp_keepalive") or "").startswith("boolean"):
            target["tcp_keepalive"] = "true"
            return True
    return False


def _notices(entry: Entry, section: str, problems: Problems, mapped: frozenset = frozenset()) -> None:
    for key, value in entry.keys.items():
        if key in mapped:
            continue
        option = options.find(section, key)
        shown = _NOTICE_WHEN.get(key, lambda v: v not in (None, False, "", 0))(value)
        if option.status == options.NOTICE and shown:
            problems.notice(entry.source, entry.where, option.name, f"no effect: {option.equivalent}")
        elif option.status == options.REFUSED and value not in (None, False):
            problems.error(entry.source, entry.where, option.name, f"not supported: {option.equivalent}")


def _addresses(entry: Entry, problems: Problems, *, listen: bool) -> list[str]:
    """host/port as epollmux address texts: every address of a listen name (sslh binds them all);
    a backend name stays a name (resolved at start and on reload)."""
    host, port = entry.keys.get("host"), entry.keys.get("port")
    for key, value in (("host", host), ("port", port)):
        if value in (None, "") and not problems.has(entry.source, entry.where, key):
            problems.error(entry.source, entry.where, key, "is required")
    if host in (None, "") or port in (None, ""):
        return []
    if not port.isdigit():
        try:
            port = str(socket.getservbyname(port, "tcp"))
        except OSError:
            problems.error(entry.source, entry.where, "port", f"unknown service '{port}'")
            problems.unresolvable = True
            return []
    if int(port) > 65535:
        problems.error(entry.source, entry.where, "port", f"'{port}': a port is a number from 0 to 65535")
        return []
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host.split("%")[0])
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        problems.error(entry.source, entry.where, "host", f"cannot resolve '{host}': "
                                                          f"{getattr(exc, 'strerror', None) or exc}")
        problems.unresolvable = True
        return []
    if not listen:
        return [f"{host}:{port}"]
    found = dict.fromkeys(f"[{i[4][0]}]:{port}" if i[0] == socket.AF_INET6 else f"{i[4][0]}:{port}"
                          for i in infos)
    return list(found)


def _listen(name: str, entry: Entry, model: Model, out: Translation, problems: Problems) -> None:
    section = {"address": []}
    mapped = frozenset({"keepalive"}) if _keepalive(entry, section, out, "listen") else frozenset()
    _notices(entry, options.LISTEN, problems, mapped)
    if entry.keys.get("is_unix"):
        return
    udp = bool(entry.keys.get("is_udp"))
    section["address"] = [("udp:" + a if udp else a) for a in _addresses(entry, problems, listen=True)]
    if not section["address"]:
        return      # reported
    for key in ("max_connections", "proxyprotocol", "keepalive"):
        if udp and entry.keys.get(key):
            problems.error(entry.source, entry.where, key, "TCP only: not on an is_udp entry")
    if entry.keys.get("max_connections") and not udp:
        section["max_connections"] = str(entry.keys["max_connections"])
    if entry.keys.get("proxyprotocol") and not udp:
        section["proxy_protocol"] = "any"
        section["trusted"] = ["0.0.0.0/0", "::/0"]     # sslh takes a header from anyone
    out.data["listen"][name] = section
    out.origin[f"listen.{name}"] = entry
    out.comments[f"listen.{name}"] = f"{entry.source}: {entry.where}"


def _route(entry: Entry, model: Model, out: Translation, problems: Problems) -> str | None:
    keys = entry.keys
    section: dict = {}
    mapped = frozenset({"keepalive"}) if _keepalive(entry, section, out, "routes") else frozenset()
    _notices(entry, options.PROTOCOL, problems, mapped)
    sslh_name = keys.get("name")
    if not sslh_name:
        if not problems.has(entry.source, entry.where, "name"):
            problems.error(entry.source, entry.where, "name", "is required")
        return None
    probe = "regex" if keys.get("probe") == "regex" else options.PROTOCOLS.get(sslh_name, "")
    if probe == "":
        known = ", ".join(sorted(options.PROTOCOLS))
        problems.error(entry.source, entry.where, "name", f"unknown protocol '{sslh_name}' (known: {known})")
        return None
    udp = bool(keys.get("is_udp"))
    if sslh_name in options.UDP_ONLY and not udp:
        problems.error(entry.source, entry.where, "name", f"'{sslh_name}' is UDP only: write it as a protocols entry with is_udp: true")
        return None
    section = {"probe": probe, **section}
    if keys.get("is_unix"):
        if udp:
            problems.error(entry.source, entry.where, "is_unix", "a UDP backend is host:port, not a unix socket")
            return None
        section["backend"] = f"unix:{keys.get('host', '')}"
    else:
        backend = _addresses(entry, problems, listen=False)
        section["backend"] = ("udp:" if udp else "") + backend[0] if backend else ""
    if udp and keys.get("udp_timeout") is not None:
        section["udp_idle_timeout"] = str(keys["udp_timeout"])
    elif keys.get("udp_timeout") is not None:
        problems.notice(entry.source, entry.where, "udp_timeout", "no effect without is_udp")
    for sslh_key, key, probes in (("sni_hostnames", "sni", ("tls",)), ("alpn_protocols", "alpn", ("tls",)),
                                  ("regex_patterns", "regex", ("regex",)), ("minlength", "min_length", ("regex",))):
        if sslh_key not in keys:
            continue
        if probe not in probes:
            problems.error(entry.source, entry.where, sslh_key,
                           f"only applies to {' or '.join(probes)} here, not '{sslh_name}'")
            continue
        value = keys[sslh_key]
        section[key] = [_byte_escaped(p) for p in value] if key == "regex" else \
            str(value) if key == "min_length" else value
    pp = keys.get("proxyprotocol")
    if pp in (1, 2):
        section["send_proxy"] = f"v{pp}"
    elif pp is not None and pp != 0:
        problems.error(entry.source, entry.where, "proxyprotocol", f"expected 0, 1 or 2, got {pp!r}")
    elif pp is None and not udp and any(e.keys.get("proxyprotocol") for e in model.listen):
        section["send_proxy"] = "v1"
        problems.notice(entry.source, entry.where, "proxyprotocol",
                        "sslh passes the client's PROXY header on as it came; epollmux sends a v1 header "
                        "made from it (proxyprotocol: 0 sends none, 2 sends v2)")
    if keys.get("transparent") or (model.globals.get("transparent") and not udp):
        section["transparent"] = "true"
    if keys.get("max_connections"):
        section["max_connections"] = str(keys["max_connections"])
    base = "anyprot" if sslh_name == "anyprot" else sslh_name
    name, n = base, 1
    while name in out.data["routes"]:
        n += 1
        name = f"{base}{n}"
    out.data["routes"][name] = section
    out.origin[f"routes.{name}"] = entry
    out.comments[f"routes.{name}"] = f"{entry.source}: {entry.where}"
    return name


def _byte_escaped(pattern: str) -> str:
    """libconfig decoded `\\xNN` into characters; epollmux reads `\\xNN` text as the byte NN.
    sslh's catch-all "" (which epollmux refuses as a mistake) becomes "(?:)", which also matches anything."""
    if pattern == "":
        return "(?:)"
    out = []
    for ch in pattern:
        if 0x20 <= ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in (bytes([ord(ch)]) if ord(ch) < 256 else ch.encode()))
    return "".join(out)


def _is_udp(out: Translation, name: str) -> bool:
    return out.data["routes"][name]["backend"].startswith("udp:")


def _order(names: list[tuple[str, Entry]], out: Translation, problems: Problems) -> None:
    """sslh sends what no probe recognises to the last protocol of its kind (TCP entries for a connection,
    is_udp entries for a datagram): epollmux needs an `any` route of that kind for it."""
    _order_kind([(n, e) for n, e in names if not _is_udp(out, n)], out, problems, "fallback")
    _order_kind([(n, e) for n, e in names if _is_udp(out, n)], out, problems, "udp_fallback")


def _order_kind(names: list[tuple[str, Entry]], out: Translation, problems: Problems, fallback_name: str) -> None:
    routes = out.data["routes"]
    for i, (name, entry) in enumerate(names[:-1]):
        if routes[name]["probe"] == "any":
            problems.error(entry.source, entry.where, "name",
                           f"'{entry.keys['name']}' takes every client, so the protocols after it "
                           "could never be chosen: put it last")
            return
    if names and routes[names[-1][0]]["probe"] != "any":
        last, entry = names[-1]
        fallback = {k: v for k, v in routes[last].items()
                    if k in ("backend", "send_proxy", "transparent", "udp_idle_timeout")}
        routes[fallback_name] = {"probe": "any", **fallback}
        out.origin[f"routes.{fallback_name}"] = entry
        out.comments[f"routes.{fallback_name}"] = f"sslh's rule: what no probe recognises goes to the last " \
                                                  f"protocol ({entry.where})"


def _on_timeout(model: Model, names: list[tuple[str, Entry]], out: Translation) -> None:
    """sslh: the first protocol named by on-timeout (default ssh), else the first protocol."""
    wanted = model.globals.get("on_timeout", "ssh")
    names = [(name, entry) for name, entry in names if not _is_udp(out, name)]    # a datagram has no timeout
    chosen = next((name for name, entry in names if entry.keys.get("name") == wanted), None)
    if chosen is None and names:
        chosen = names[0][0]
    out.data["global"]["on_timeout"] = chosen or ""


def load_file(path: str) -> config.Config:
    """An sslh file alone, translated and validated (what a test or a reload without flags needs)."""
    from epollmux.sslh import cfgfile
    problems, model = Problems(), Model()
    cfgfile.read(path, model, problems)
    cfg = validate(translate(model, problems), problems)
    if problems.errors:
        raise config.ConfigError(problems.errors)
    return named(cfg, path)


def render(out: Translation, notices: list[str]) -> str:
    """The translation as an epollmux.conf (configobj syntax), notices as comments."""
    lines = ["# epollmux.conf equivalent of the sslh configuration (epollmux --print-config)"]
    lines += [f"# notice: {n}" for n in notices]
    lines += ["", "[global]"] + [f"{k} = {_value(v)}" for k, v in out.data["global"].items()]
    for part in ("listen", "routes"):
        lines += ["", f"[{part}]"]
        for name, section in out.data[part].items():
            comment = out.comments.get(f"{part}.{name}")
            lines += [f"  # {comment}"] if comment else []
            lines += [f"  [[{name}]]"] + [f"  {k} = {_value(v)}" for k, v in section.items()]
    return "\n".join(lines) + "\n"


def _value(value) -> str:
    if isinstance(value, list):
        return ", ".join(_quoted(v) for v in value) + ("," if len(value) == 1 else "")
    return _quoted(str(value))


def _quoted(text: str) -> str:
    if text and not re.search(r"[,#\"'=]|^\s|\s$", text):
        return text
    return f"'{text}'" if "'" not in text else f'"{text}"'
