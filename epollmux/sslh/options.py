"""The sslh option table: every command-line flag and config key of sslh 2.x, what it becomes here.

Owns: `OPTIONS` (one row per option: where sslh takes it, its argument, its status here and the
epollmux equivalent), the status vocabulary and the lookups the command line and the config file
reader use. The README's "Coming from sslh" table is checked against this table by a test.
Must not import argparse, libconf, configobj, sockets or anything that serves connections.

Status:
- `same`: does what sslh does.
- `mapped`: translated to an epollmux setting that does the same job (the equivalent column says which).
- `notice`: accepted, has no effect here, and says so once at start (it changes no routing).
- `refused`: an error, because it would change routing or data in a way epollmux does not do.
"""

from __future__ import annotations

from dataclasses import dataclass

SAME, MAPPED, NOTICE, REFUSED = "same", "mapped", "notice", "refused"
STATUSES = (SAME, MAPPED, NOTICE, REFUSED)
CLI, GLOBAL, LISTEN, PROTOCOL = "command line", "global", "listen", "protocols"


@dataclass(frozen=True)
class Option:
    name: str           # as sslh spells it: "-F/--config", "timeout", "sni_hostnames"
    where: str          # CLI, GLOBAL, LISTEN or PROTOCOL
    argument: str       # what it takes ("" for a flag)
    status: str
    equivalent: str     # what it becomes in epollmux (or why it is refused / has no effect)

    @property
    def key(self) -> str:
        """The config key, underscores for dashes (sslh's parser takes both spellings)."""
        return self.name.replace("-", "_")


VERBOSE_CLASSES = ("config", "config-error", "connections", "connections-try", "connections-error", "fd",
                   "packets", "probe-info", "probe-error", "system-error", "int-error")
# classes whose messages epollmux writes at debug level: turning one on lowers the level to debug
VERBOSE_DEBUG = frozenset({"connections-try", "fd", "packets", "probe-info", "config"})
# sslh's protocol shortcuts and names -> epollmux probe
PROTOCOLS = {"ssh": "ssh", "tls": "tls", "ssl": "tls", "openvpn": "openvpn", "tinc": "tinc", "xmpp": "xmpp",
             "http": "http", "adb": "adb", "socks5": "socks5", "syslog": "syslog", "msrdp": "msrdp",
             "regex": "regex", "anyprot": "any", "timeout": "any", "wireguard": "wireguard", "teamspeak": "teamspeak"}
UDP_ONLY = frozenset({"wireguard", "teamspeak"})     # sslh refuses them on TCP, and so does the translation
SHORTCUTS = ("ssh", "tls", "ssl", "openvpn", "tinc", "wireguard", "xmpp", "http", "adb", "socks5", "syslog",
             "msrdp", "anyprot")

KEEPALIVE = "`global.tcp_keepalive = yes` (epollmux's default: on for both legs of every connection)"
_UDP_CLI = "UDP only, and sslh's command line makes TCP entries: write it in the config file with is_udp"

OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------ command line
    Option("-F/--config", CLI, "FILE", MAPPED, "read sslh's libconfig file (translated; see --print-config)"),
    Option("-f/--foreground", CLI, "", SAME, "run in the foreground (without it: `--daemon`)"),
    Option("-p/--listen", CLI, "HOST:PORT", MAPPED, "a `[listen]` address (repeatable)"),
    Option("-u/--user", CLI, "USER", MAPPED, "`global.user`"),
    Option("-P/--pidfile", CLI, "FILE", SAME, "`--pidfile`"),
    Option("-t/--timeout", CLI, "SECONDS", MAPPED, "`global.probe_timeout`"),
    Option("--on-timeout", CLI, "NAME", MAPPED, "`global.on_timeout` (the first protocol of that name)"),
    Option("-V/--version", CLI, "", SAME, "`--version`"),
    Option("-n/--numeric", CLI, "", SAME, "logs show numeric addresses always"),
    Option("-i/--inetd", CLI, "", SAME, "serve the one connection on stdin (as sslh-fork)"),
    Option("-C/--chroot", CLI, "DIR", NOTICE, "no chroot: use systemd's RootDirectory= or ProtectSystem="),
    Option("--transparent", CLI, "", MAPPED, "`transparent = true` on every route"),
    Option("-v/--verbose", CLI, "[N]", MAPPED, "N > 0: `log_level = debug`; 0: `warning`"),
    *(Option(f"--verbose-{c}", CLI, "N", MAPPED,
             "N > 0 lowers `log_level` to debug" if c in VERBOSE_DEBUG else
             "`log_level` (0 for every connection class: `warning`)") for c in VERBOSE_CLASSES),
    *(Option(f"--{name}", CLI, "HOST:PORT", REFUSED if name in UDP_ONLY else MAPPED,
             _UDP_CLI if name in UDP_ONLY else f"a route with `probe = {PROTOCOLS[name]}`")
      for name in SHORTCUTS),
    Option("--syslog-facility", CLI, "NAME", NOTICE, "`log_target = syslog` uses facility daemon"),
    Option("--logfile", CLI, "FILE", NOTICE, "logs go to stderr (journald) or syslog, not a file"),
    # ------------------------------------------------------------ globals of the config file
    Option("timeout", GLOBAL, "seconds", MAPPED, "`global.probe_timeout`"),
    Option("on-timeout", GLOBAL, "name", MAPPED, "`global.on_timeout` (also spelt on_timeout)"),
    Option("user", GLOBAL, "name", MAPPED, "`global.user`"),
    Option("pidfile", GLOBAL, "path", SAME, "`--pidfile`"),
    Option("chroot", GLOBAL, "path", NOTICE, "no chroot: use systemd's RootDirectory= or ProtectSystem="),
    Option("foreground", GLOBAL, "bool", SAME, "run in the foreground"),
    Option("inetd", GLOBAL, "bool", SAME, "serve the one connection on stdin"),
    Option("transparent", GLOBAL, "bool", MAPPED, "`transparent = true` on every route"),
    Option("numeric", GLOBAL, "bool", SAME, "logs show numeric addresses always"),
    Option("verbose", GLOBAL, "int", MAPPED, "> 0: `log_level = debug`; 0: `warning`"),
    *(Option(f"verbose-{c}", GLOBAL, "int", MAPPED, "`log_level`, as the command-line flag")
      for c in VERBOSE_CLASSES),
    Option("syslog_facility", GLOBAL, "name", NOTICE, "`log_target = syslog` uses facility daemon; "
                                                      "\"none\": stderr"),
    Option("logfile", GLOBAL, "path", NOTICE, "logs go to stderr (journald) or syslog, not a file"),
    Option("udp_max_connections", GLOBAL, "int", MAPPED, "`max_flows` (with `workers = 1`)"),
    # ------------------------------------------------------------ listen entries
    Option("host", LISTEN, "string", SAME, "`[listen]` address host"),
    Option("port", LISTEN, "string", SAME, "`[listen]` address port (a service name is looked up)"),
    Option("is_udp", LISTEN, "bool", MAPPED, "`[listen]` address `udp:host:port`"),
    Option("is_unix", LISTEN, "bool", REFUSED, "listeners are TCP (host:port); unix sockets are for backends"),
    Option("keepalive", LISTEN, "bool", MAPPED, KEEPALIVE),
    Option("max_connections", LISTEN, "int", MAPPED, "`[listen]` `max_connections` (with `workers = 1`)"),
    Option("proxyprotocol", LISTEN, "bool", MAPPED, "`proxy_protocol = any`, `trusted = 0.0.0.0/0, ::/0`"),
    # ------------------------------------------------------------ protocols entries
    Option("name", PROTOCOL, "probe", MAPPED, "`probe` (ssl -> tls, anyprot and timeout -> any)"),
    Option("host", PROTOCOL, "string", SAME, "`backend` host"),
    Option("port", PROTOCOL, "string", SAME, "`backend` port (a service name is looked up)"),
    Option("is_udp", PROTOCOL, "bool", MAPPED, "a UDP route: `backend = udp:host:port`"),
    Option("is_unix", PROTOCOL, "bool", MAPPED, "`backend = unix:/path`"),
    Option("udp_timeout", PROTOCOL, "seconds", MAPPED, "the UDP route's `udp_idle_timeout`"),
    Option("fork", PROTOCOL, "bool", NOTICE, "no process per connection: the workers serve everything"),
    Option("tfo_ok", PROTOCOL, "bool", NOTICE, "no TCP Fast Open towards backends"),
    Option("transparent", PROTOCOL, "bool", MAPPED, "the route's `transparent`"),
    Option("resolve_on_forward", PROTOCOL, "bool", NOTICE, "the name is resolved at start and on reload"),
    Option("log_level", PROTOCOL, "0|1", NOTICE, "every connection gets one access-log line"),
    Option("keepalive", PROTOCOL, "bool", MAPPED, KEEPALIVE),
    Option("max_connections", PROTOCOL, "int", MAPPED, "the route's `max_connections` (with `workers = 1`)"),
    Option("sni_hostnames", PROTOCOL, "[globs]", MAPPED, "`sni` (case-insensitive)"),
    Option("alpn_protocols", PROTOCOL, "[globs]", MAPPED, "`alpn`"),
    Option("regex_patterns", PROTOCOL, "[patterns]", MAPPED, "`regex` (Python `re` on bytes, not PCRE2)"),
    Option("minlength", PROTOCOL, "int", MAPPED, "`min_length` (regex only; on another probe: refused)"),
    Option("proxyprotocol", PROTOCOL, "0|1|2", MAPPED, "1, 2: `send_proxy = v1|v2`; 0: the incoming "
                                                       "header is not passed on"),
    Option("service", PROTOCOL, "name", NOTICE, "no libwrap: use the route's `allow`/`deny`"),
    Option("probe", PROTOCOL, "builtin|regex", MAPPED, "sslh before 1.21: \"regex\" makes a regex route"),
)


def find(where: str, key: str) -> Option | None:
    """The row for a config key (either spelling) in a section, or None when sslh has no such key."""
    key = key.replace("-", "_")
    for option in OPTIONS:
        if option.where == where and option.key == key:
            return option
    return None
