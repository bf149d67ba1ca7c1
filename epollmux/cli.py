"""The `epollmux` command line (README "Command line"): parse arguments, pick the mode, map outcomes to exit codes.

Owns: argument parsing, the sslh-style config-free mode (flags become routes in command-line order)
and exit codes: 0 clean stop, 1 invalid configuration or arguments, 2 runtime failure at start.
Must not know how connections are served beyond calling the supervisor.
Must not import: no rule of the layering table (it is the top); the serving side only through `process.start`, late.
"""

from __future__ import annotations

import argparse
import os
import sys

from epollmux import __version__, checks, config
from epollmux.observe.words import plural

EXIT_OK, EXIT_CONFIG, EXIT_RUNTIME = 0, 1, 2


def _default_config() -> str:
    """/etc/epollmux/epollmux.conf for the Debian package (the package in /usr/lib/python3/dist-packages);
    PREFIX/etc/epollmux/epollmux.conf for `make install`, whose private venv is PREFIX/lib/epollmux;
    else /usr/local/etc/epollmux/epollmux.conf."""
    if os.path.abspath(__file__).startswith("/usr/lib/python3/dist-packages/"):
        return "/etc/epollmux/epollmux.conf"
    head, tail = os.path.split(os.path.normpath(sys.prefix))
    prefix = os.path.dirname(head) if tail == "epollmux" and os.path.basename(head) == "lib" else "/usr/local"
    return os.path.join(prefix, "etc", "epollmux", "epollmux.conf")


DEFAULT_CONFIG = _default_config()
SSLH_PROBES = ("ssh", "tls", "http", "openvpn", "tinc", "xmpp", "socks5", "adb", "syslog")


class _RouteFlag(argparse.Action):
    """Collects --ssh/--tls/... in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        routes = getattr(namespace, "cli_routes", None) or []
        routes.append((self.const, values))
        namespace.cli_routes = routes


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="epollmux", description="Share one TCP port between many services.")
    p.add_argument("-c", "--config", metavar="FILE", help=f"configuration file (default: {DEFAULT_CONFIG})")
    p.add_argument("--check", action="store_true", help="validate the configuration, print every problem, exit")
    p.add_argument("--reload", action="store_true",
                   help="ask the running daemon (over [metrics] stats_socket) to reload the file; print the "
                        "outcome; exit 1 with the errors if the file is refused")
    p.add_argument("--explain", nargs="+", metavar="CAPTURE",
                   help="show, per listener and route, what the daemon would do with a client's first bytes "
                        "(a file of bytes, or a pcap/pcapng: its first connection's client payload); no network")
    p.add_argument("--daemon", action="store_true", help="detach (classic double fork)")
    p.add_argument("--pidfile", metavar="P", help="with --daemon: write the PID here")
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    p.add_argument("--version", action="version", version=f"epollmux {__version__}")
    sslh = p.add_argument_group("config-free mode (sslh style): flags become routes in command-line order")
    sslh.add_argument("--listen", action="append", metavar="ADDR", help="host:port or [v6]:port to listen on")
    for name in SSLH_PROBES:
        sslh.add_argument(f"--{name}", action=_RouteFlag, const=name, metavar="HOST:PORT",
                          help=f"route {name} clients to HOST:PORT")
    sslh.add_argument("--anyprot", action=_RouteFlag, const="any", metavar="HOST:PORT",
                      help="route everything else to HOST:PORT (the fallback)")
    sslh.add_argument("--on-timeout", metavar="NAME", help="route for clients that stay silent (default: ssh)")
    sslh.add_argument("--probe-timeout", metavar="S", help="seconds a client has to reveal its protocol")
    p.set_defaults(cli_routes=[])
    return p


def config_from_flags(args) -> config.Config:
    """Build the configuration that the sslh-style flags describe."""
    if not args.cli_routes:
        raise config.ConfigError(["command line: --listen needs at least one route flag (--ssh, --tls, ..., --anyprot)"])
    routes, names = {}, []
    for probe, target in args.cli_routes:
        base = "anyprot" if probe == "any" else probe     # the flag's name, as sslh users write it
        name = base if base not in routes else f"{base}{sum(n.startswith(base) for n in routes) + 1}"
        routes[name] = {"probe": probe, "backend": target}
        names.append(name)
    on_timeout = args.on_timeout if args.on_timeout is not None else ("ssh" if "ssh" in routes else "")
    glob = {"on_timeout": on_timeout}
    if args.probe_timeout is not None:
        glob["probe_timeout"] = args.probe_timeout
    data = {"global": glob, "listen": {"cli": {"address": args.listen}}, "routes": routes}
    return config.load_dict("command line", data)


def load(args) -> config.Config:
    if args.listen:
        if args.config:
            raise config.ConfigError(["command line: use either -c FILE or --listen with route flags, not both"])
        return config_from_flags(args)
    if args.cli_routes:
        raise config.ConfigError(["command line: route flags need --listen ADDR"])
    return config.load_file(args.config or DEFAULT_CONFIG)


CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


def effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def warnings(cfg: config.Config) -> list[str]:
    """What is valid but will not work as this process runs."""
    out = []
    transparent = [r.name for r in cfg.routes.values() if r.transparent]
    caps = effective_caps()
    if transparent and not (caps >> CAP_NET_ADMIN & 1 or caps >> CAP_NET_RAW & 1):
        out.append(f"[routes] transparent: {', '.join(transparent)} need CAP_NET_ADMIN or CAP_NET_RAW, "
                   "which this process lacks (systemd: AmbientCapabilities=CAP_NET_ADMIN)")
    return out


def main(argv: list[str] | None = None) -> int:
    prog = sys.argv[0] if argv is None else "epollmux"
    argv = sys.argv[1:] if argv is None else argv
    from epollmux.sslh import cmdline as sslh_cmdline
    if sslh_cmdline.applies(argv, prog):
        return sslh_cmdline.main(argv, prog)
    args = parser().parse_args(argv)
    try:
        cfg = load(args)
    except config.ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    if args.reload:                 # the daemon checks the file itself and reports what it refuses
        from epollmux.tools import control
        return control.reload(cfg)
    if args.explain:
        from epollmux.tools import explain
        return explain.main(cfg, args.explain)
    found = checks.run(cfg, starting=not args.check)
    if found.errors:
        print("\n".join(found.errors), file=sys.stderr)
        return EXIT_CONFIG
    for warning in found.warnings + [f"{cfg.source}: warning: {w}" for w in warnings(cfg)]:
        print(warning, file=sys.stderr)
    if args.check:
        print(f"{cfg.source}: OK ({plural(len(cfg.listeners), 'listener')}, {plural(len(cfg.routes), 'route')})")
        return EXIT_OK
    from epollmux.process import start  # imported late: --check and --version need none of it
    return start.run(cfg, args)
