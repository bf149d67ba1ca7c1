"""sslh's command line: when it applies, its parser, and running what it describes with sslh's exit codes.

Owns: `applies()` (argv[0] named sslh*, or an argument only sslh has: -F, -f, -p, -u, -P, -t, -V, -n, -i,
-C, --ssl, --transparent, --verbose-*, ...), the argparse parser of sslh 2.x's options plus epollmux's
`--check` and `--print-config`, the Model those options describe, and the exit codes sslh's tests pin:
6 bad option, 2 unknown user, 3 pidfile not writable, 4 unresolvable address, 1 any other problem.
Must not import libconf (cfgfile reads the file) or configobj (the config module validates).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import types

from epollmux import __version__, checks, config
from epollmux.observe.words import plural
from epollmux.sslh import options, translate
from epollmux.sslh.model import Entry, Model, Problems

EXIT_OK, EXIT_OTHER, EXIT_USER, EXIT_PIDFILE, EXIT_RESOLVE, EXIT_OPTION = 0, 1, 2, 3, 4, 6
CLI = "command line"
# arguments that only sslh's command line has (epollmux's own parser knows --listen, --ssh, --pidfile, ...)
_ONLY_SSLH = {"-F", "-f", "--foreground", "-p", "-u", "--user", "-P", "-t", "--timeout", "-V", "-n",
              "--numeric", "-i", "--inetd", "-C", "--chroot", "--transparent", "--ssl", "--wireguard",
              "--msrdp", "--syslog-facility", "--logfile", "--print-config",
              *(f"--verbose-{c}" for c in options.VERBOSE_CLASSES)}
_ADDRESS = re.compile(r"^(.+):(\w+)$")      # sslh's own rule for HOST:PORT on the command line


def applies(argv: list[str], prog: str) -> bool:
    """True when these arguments are sslh's: the command is named sslh*, or an sslh-only option is given."""
    if os.path.basename(prog).startswith("sslh"):
        return True
    for arg in argv:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in _ONLY_SSLH or (re.match(r"^-[FfpuPtVniC]", arg) and not arg.startswith("--")):
            return True
    return False


class _Shortcut(argparse.Action):
    """--ssh/--tls/... HOST:PORT: a protocol, in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.protocols = [*namespace.protocols, (self.const, values)]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_OPTION, f"{self.prog}: error: {message}\n")


def parser(prog: str = "epollmux") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="sslh's command line, served by epollmux.")
    p.add_argument("-F", "--config", metavar="FILE", help="sslh's libconfig configuration file")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-p", "--listen", action="append", default=[], metavar="HOST:PORT")
    p.add_argument("-u", "--user", metavar="USER")
    p.add_argument("-P", "--pidfile", metavar="FILE")
    p.add_argument("-t", "--timeout", type=float, metavar="SECONDS", help="probe timeout")
    p.add_argument("--on-timeout", metavar="NAME", help="protocol for clients that stay silent")
    p.add_argument("-V", "--version", action="store_true")
    p.add_argument("-n", "--numeric", action="store_true")
    p.add_argument("-i", "--inetd", action="store_true", help="serve the one connection on stdin")
    p.add_argument("-C", "--chroot", metavar="DIR")
    p.add_argument("--transparent", action="store_true")
    p.add_argument("-v", "--verbose", nargs="?", type=int, const=1, metavar="N")
    for c in options.VERBOSE_CLASSES:
        p.add_argument(f"--verbose-{c}", type=int, metavar="N")
    for name in options.SHORTCUTS:
        p.add_argument(f"--{name}", action=_Shortcut, const=name, metavar="HOST:PORT")
    p.add_argument("--syslog-facility", metavar="NAME")
    p.add_argument("--logfile", metavar="FILE")
    p.add_argument("--check", action="store_true", help="validate, print every problem, exit")
    p.add_argument("--print-config", action="store_true", help="print the equivalent epollmux.conf and exit")
    p.set_defaults(protocols=[])
    for action in p._actions:       # each sslh option's help is its row of the option table
        row = next((o for o in options.OPTIONS if o.where == options.CLI
                    and set(action.option_strings) & set(o.name.split("/"))), None)
        if row is not None:
            action.help = f"{row.equivalent} ({row.status})".replace("%", "%%")
    return p


def model_from(args, problems: Problems) -> Model:
    """The command line's settings over the file's (sslh: the command line wins; its lists append)."""
    model = Model()
    if args.config:
        from epollmux.sslh import cfgfile     # libconf is needed only with a file
        cfgfile.read(args.config, model, problems)
    for key in ("user", "pidfile", "timeout", "on_timeout", "chroot", "verbose", "syslog_facility", "logfile",
                *(f"verbose_{c.replace('-', '_')}" for c in options.VERBOSE_CLASSES)):
        value = getattr(args, key)
        if value is not None:
            model.set_global(CLI, key, value)
    for key in ("foreground", "numeric", "inetd", "transparent"):
        if getattr(args, key):
            model.set_global(CLI, key, True)
    for text in args.listen:
        model.listen.append(_cli_entry(f"--listen {text}", text, {}, problems))
    activated = _activated_addresses()
    if activated:
        source = model.listen[0].source if model.listen else CLI
        problems.notice(source, "listen", "", f"not bound: systemd passes {len(activated)} socket(s), "
                                              "served instead (as sslh does)")
        model.listen = [Entry("systemd", f"socket {i}", {"host": host, "port": port})
                        for i, (host, port) in enumerate(activated)]
    for name, text in args.protocols:
        model.protocols.append(_cli_entry(f"--{name} {text}", text, {"name": name}, problems))
    return model


def _activated_addresses() -> list[tuple[str, str]]:
    """The local addresses of the sockets systemd passes (LISTEN_FDS for this PID), left in place for
    the supervisor to adopt; sslh serves these instead of its listen entries."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or not os.environ.get("LISTEN_FDS", "").isdigit():
        return []
    found = []
    for fd in range(3, 3 + int(os.environ["LISTEN_FDS"])):
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue        # the supervisor reports it
        try:
            host, port = sock.getsockname()[:2]
        except (OSError, TypeError, ValueError):
            continue
        finally:
            sock.detach()
        found.append((host, str(port)))
    return found


def _cli_entry(where: str, text: str, keys: dict, problems: Problems) -> Entry:
    m = _ADDRESS.match(text)
    if m is None:
        problems.error(CLI, where, "", "expected HOST:PORT")
        problems.bad_option = True
        return Entry(CLI, where, keys)
    return Entry(CLI, where, {**keys, "host": m.group(1), "port": m.group(2)})


def load(args, *, starting: bool = True) -> tuple[config.Config, "translate.Translation", Model, Problems]:
    """Read, translate and validate what `args` describe, cross-key checks included (checks.run, as
    epollmux's own --check); raises config.ConfigError with every problem (its `exit_code` is sslh's for
    the worst of them). Warnings go to the returned Problems."""
    problems = Problems()
    model = model_from(args, problems)
    result = translate.translate(model, problems)
    cfg = translate.validate(result, problems)
    if cfg is not None and not problems.errors:
        found = checks.run(cfg, starting=starting)
        # the added fallback route repeats the last protocol's backend: its findings would repeat too
        problems.errors += [e for e in dict.fromkeys(result.remap(found.errors)) if e not in problems.errors]
        problems.warnings += list(dict.fromkeys(result.remap_warnings(found.warnings)))
    if problems.errors:
        error = config.ConfigError(list(dict.fromkeys(problems.errors + problems.warnings)))
        error.exit_code = EXIT_RESOLVE if problems.unresolvable else \
            EXIT_OPTION if problems.bad_option else EXIT_OTHER
        raise error
    return translate.named(cfg, model.config_file or CLI), result, model, problems


def main(argv: list[str], prog: str = "epollmux") -> int:
    name = os.path.basename(prog)
    args = parser("epollmux" if name.startswith("__main__") else name).parse_args(argv)
    if args.version:
        print(f"epollmux {__version__} (sslh command line)")
        return EXIT_OK
    try:
        cfg, result, model, problems = load(args, starting=not (args.check or args.print_config))
    except config.ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return exc.exit_code
    if args.print_config:
        sys.stdout.write(translate.render(result, problems.notices))
        return EXIT_OK
    for line in [f"notice: {n}" for n in problems.notices] + problems.warnings:
        print(line, file=sys.stderr)
    if args.check:
        print(f"{cfg.source}: OK ({plural(len(cfg.listeners), 'listener')}, {plural(len(cfg.routes), 'route')})")
        return EXIT_OK
    return _run(cfg, result, model, args)


def _run(cfg: config.Config, result: "translate.Translation", model: Model, cli) -> int:
    from epollmux.process import privileges
    try:
        privileges.resolve(cfg.settings.user, cfg.settings.group)
    except privileges.PrivilegeError as exc:
        print(f"epollmux: {exc}", file=sys.stderr)
        return EXIT_USER
    if result.pidfile:
        try:
            os.close(os.open(result.pidfile, os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as exc:
            print(f"epollmux: pidfile {result.pidfile}: {exc.strerror}", file=sys.stderr)
            return EXIT_PIDFILE
    if result.inetd:
        from epollmux.sslh import inetd
        return inetd.serve(cfg)
    from epollmux.process import supervisor
    # SIGHUP (which sslh lacks) reads the file again with the same command line
    args = types.SimpleNamespace(verbose=False, daemon=not result.foreground, pidfile=result.pidfile,
                                 listen=None, config_path=model.config_file or CLI,
                                 loader=lambda _path: load(cli)[0])
    return supervisor.run(cfg, args)
