"""Man pages and bash completion from the one source of each: epollmux(8) and the completion from the
argparse parser (cli.parser), epollmux.conf(5) from the configspec (its comments are the meanings).

Owns: the man page and completion text. `python -m epollmux.tools.manpage DIR` writes DIR/epollmux.8, DIR/epollmux.conf.5 and
DIR/epollmux.bash-completion; doc/ holds the current ones (a test checks they are up to date).
Must not import the supervisor or anything that serves connections.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from epollmux import __version__, cli

SPEC = Path(__file__).resolve().parent.parent / "configspec.ini"
CONFIG_FILES = ("/etc/epollmux/epollmux.conf (Debian package); PREFIX/etc/epollmux/epollmux.conf "
                "(make install, PREFIX /usr/local by default)")
HEADER = '.TH {name} {section} "" "epollmux {version}" "{title}"\n'


def esc(text: str) -> str:
    """Roff-safe text: backslashes, hyphens and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _invocation(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{esc(o)}\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return names
    meta = action.metavar or action.dest.upper()
    return f"{names} \\fI{esc(meta)}\\fR" + (" ..." if action.nargs in ("+", "*") else "")


def _help(action: argparse.Action) -> str:
    text = (action.help or "") % {"default": action.default} if action.help else ""
    return text.replace(cli.DEFAULT_CONFIG, "see FILES")


def epollmux_8() -> str:
    p = cli.parser()
    out = [HEADER.format(name="EPOLLMUX", section=8, version=__version__, title="System Administration"),
           ".SH NAME\nepollmux \\- share one TCP port between SSH, TLS, HTTP, OpenVPN and more\n",
           ".SH SYNOPSIS\n\\fBepollmux\\fR [\\fB\\-c\\fR \\fIFILE\\fR] [\\fB\\-\\-check\\fR | \\fB\\-\\-reload\\fR | "
           "\\fB\\-\\-explain\\fR \\fICAPTURE\\fR ...]\n.br\n\\fBepollmux\\fR \\fB\\-\\-listen\\fR \\fIADDR\\fR "
           "[\\fB\\-\\-ssh\\fR \\fIHOST:PORT\\fR] [\\fB\\-\\-tls\\fR \\fIHOST:PORT\\fR] ... "
           "[\\fB\\-\\-anyprot\\fR \\fIHOST:PORT\\fR]\n",
           ".SH DESCRIPTION\n" + esc(p.description) + " A supervisor holds the listening sockets and runs "
           "event-loop workers that peek at each client's first bytes, pick a route and relay the "
           "connection to its backend. The configuration is described in \\fBepollmux.conf\\fR(5).\n"]
    for group in p._action_groups:
        actions = [a for a in group._group_actions if a.option_strings]
        if not actions:
            continue
        title = "OPTIONS" if group.title in ("options", "optional arguments") else group.title
        out.append(f".SH {esc(title.upper() if title == 'OPTIONS' else 'CONFIG-FREE MODE')}\n")
        if title != "OPTIONS":
            out.append(esc(title[0].upper() + title[1:]) + ".\n")
        for action in actions:
            out.append(f".TP\n{_invocation(action)}\n{esc(_help(action))}\n")
    out.append(_sslh_section())
    out.append(".SH SIGNALS\n.TP\nSIGHUP\nReload the file: it is validated first; a bad file changes nothing.\n"
               ".TP\nSIGUSR1\nLog the statistics of the supervisor and every worker.\n"
               ".TP\nSIGTERM, SIGINT\nClose the listening sockets at once (new clients are refused), let open "
               "connections finish, cutting them with a reset after \\fBdrain_timeout\\fR (0: never), exit. "
               "A second one during the drain stops at once: every connection is reset. Under systemd the "
               "unit's \\fBTimeoutStopSec\\fR (45 s as shipped) must exceed \\fBstop_delay\\fR + "
               "\\fBdrain_timeout\\fR by 10 s or more: systemd kills what is left then "
               "(\\fBdrain_timeout\\fR = 0 needs \\fBTimeoutStopSec=infinity\\fR).\n")
    out.append(".SH EXIT STATUS\n.TP\n0\nClean stop; a check or reload that succeeded.\n.TP\n1\n"
               "Invalid configuration or arguments; a reload refused.\n.TP\n2\nRuntime failure at start "
               "(cannot bind, cannot drop privileges, workers that cannot start); no answer to \\-\\-reload.\n")
    out.append(f".SH FILES\n{esc(CONFIG_FILES)}\n")
    out.append(".SH SEE ALSO\n\\fBepollmux.conf\\fR(5), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)\n")
    return "".join(out)


def _sslh_section() -> str:
    """sslh's command line (epollmux.sslh.cmdline), which the same command accepts."""
    from epollmux.sslh import cmdline
    out = [".SH SSLH COMMAND LINE\n" + esc(
        "sslh 2.x's options and its libconfig file (-F) are accepted as they are when the command is named "
        "sslh* or an option only sslh has is given; they are translated into the configuration above "
        "(--print-config shows it). Without -f the daemon detaches, as sslh does. Exit status as sslh's: "
        "6 bad option, 2 unknown user, 3 pidfile not writable, 4 an address that does not resolve, "
        "1 any other problem. See the README, \"Coming from sslh\", for every option's status.") + "\n"]
    for action in cmdline.parser()._actions:
        if action.option_strings and action.dest != "help":
            text = _help(action) or "as in sslh"
            out.append(f".TP\n{_invocation(action)}\n{esc(text)}\n")
    return "".join(out)


def spec_entries(text: str):
    """(section path, [keys], meaning, spec) per documented key, in file order; ('', '', heading) lines."""
    section, comment, pending = [], [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = re.match(r"^(\[+)([^\]]+)\]+$", line)
        if m:
            depth = len(m.group(1))
            section = section[:depth - 1] + [m.group(2)]
            comment, pending = [], None
            yield ("section", section[:], "", "")
        elif line.startswith("# ---"):
            yield ("heading", section[:], line.strip("# -"), "")
        elif line.startswith("#"):
            if section:
                comment.append(line[1:].strip())
            pending = None
        elif "=" in line:
            key, spec = (part.strip() for part in line.split("=", 1))
            if comment:
                pending = ["key", section[:], [key], " ".join(comment), [spec]]
                comment = []
                yield pending
            elif pending is not None:
                pending[2].append(key)
                pending[4].append(spec)


def _spec_text(spec: str) -> str:
    m = re.match(r"(\w+)\((.*)\)$", spec)
    if not m:
        return "text (required)" if spec == "string" else spec
    kind, args = m.groups()
    default = re.search(r'default=("[^"]*"|[^,)]+)', args)
    limits = [f"{k} {v}" for k, v in re.findall(r"\b(min|max)=([^,)]+)", args)]
    if kind == "option":
        choices = [c.strip('"') for c in re.findall(r'"[^"]*"', args.split("default=")[0])]
        out = "one of " + ", ".join(choices)
    else:
        out = {"force_list": "list", "float": "number", "integer": "integer", "boolean": "yes or no",
               "string": "text"}.get(kind, kind)
    if limits:
        out += " (" + ", ".join(limits) + ")"
    if default and default.group(1) not in ("None", "list()"):
        out += f"; default {default.group(1)}"
    return out


UDP_TEXT = (
    "A listener whose addresses are all udp:host:port or udp:[v6]:port serves UDP; a listener is all TCP or all "
    "UDP, so serving both on port 443 takes two listener sections. A route is a UDP route when its backend is "
    "written udp:host:port, when its probe exists only for UDP (quic, wireguard, dtls, teamspeak), or when a UDP "
    "listener names it in routes; its backend then needs no udp: prefix. UDP routes take the probes quic (sni, "
    "alpn), openvpn, wireguard, dtls (sni, alpn), teamspeak, regex and any, plus udp_idle_timeout, allow, deny and "
    "drain_timeout; the TCP-only keys (TLS termination, send_proxy, transparent, max_connections) are refused. "
    "A listener without routes takes the routes of its own kind. Each flow (client address and port) is probed on "
    "its first datagrams (at most 4 datagrams and 8 KiB, until probe_timeout), then relayed datagram by datagram "
    "through a socket of its own until udp_idle_timeout; max_flows and max_flows_per_source bound the flows of "
    "each worker (reason flow-limit). A reload keeps established flows in the old workers until they go idle; a "
    "stop ends them (reason udp-stop).")


def epollmux_conf_5() -> str:
    out = [HEADER.format(name="EPOLLMUX.CONF", section=5, version=__version__, title="File Formats"),
           ".SH NAME\nepollmux.conf \\- configuration of \\fBepollmux\\fR(8)\n",
           ".SH DESCRIPTION\nAn INI file (configobj syntax): \\fB[global]\\fR settings, \\fB[metrics]\\fR, "
           "one \\fB[[name]]\\fR subsection per listener under \\fB[listen]\\fR and per route under "
           "\\fB[routes]\\fR. Lists are comma-separated. Check a file with \\fBepollmux \\-c FILE \\-\\-check\\fR; "
           "apply it with \\fBsystemctl reload epollmux\\fR (\\fBepollmux \\-\\-reload\\fR), which fails with "
           "the errors when the daemon refuses the file.\n"]
    for entry in spec_entries(SPEC.read_text()):
        kind, section = entry[0], entry[1]
        if kind == "section":
            name = "[" + "] [".join(section) + "]"
            name = name.replace("[__many__]", "[[name]]")
            out.append(f".SH {esc(name)}\n" if len(section) == 1 else f".SS {esc(name)}\n")
        elif kind == "heading":
            out.append(f".SS {esc(entry[2])}\n")
        else:
            keys, meaning, specs = entry[2], entry[3], entry[4]
            out.append(".TP\n" + ", ".join(f"\\fB{esc(k)}\\fR" for k in keys) + " = " +
                       esc("; ".join(dict.fromkeys(_spec_text(s) for s in specs))) + "\n" + esc(meaning) + "\n")
    out.append(".SH UDP\n" + esc(UDP_TEXT) + "\n")
    out.append(f".SH FILES\n{esc(CONFIG_FILES)}\n")
    out.append(".SH SEE ALSO\n\\fBepollmux\\fR(8)\n")
    return "".join(out)


def bash_completion() -> str:
    p = cli.parser()
    options = sorted(o for a in p._actions for o in a.option_strings)
    files = [o for a in p._actions if a.dest in ("config", "pidfile", "explain") for o in a.option_strings]
    return f"""# bash completion for epollmux(8); generated by python -m epollmux.tools.manpage
_epollmux() {{
    local cur prev
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        {'|'.join(files)})
            COMPREPLY=($(compgen -f -- "$cur"))
            return ;;
        --on-timeout)
            COMPREPLY=($(compgen -W "{' '.join(cli.SSLH_PROBES)} anyprot" -- "$cur"))
            return ;;
    esac
    COMPREPLY=($(compgen -W "{' '.join(options)}" -- "$cur"))
}}
complete -o default -F _epollmux epollmux
"""


OUTPUTS = {"epollmux.8": epollmux_8, "epollmux.conf.5": epollmux_conf_5, "epollmux.bash-completion": bash_completion}


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    target = Path(args[0] if args else "doc")
    target.mkdir(parents=True, exist_ok=True)
    for name, make in OUTPUTS.items():
        (target / name).write_text(make())
    return 0


if __name__ == "__main__":
    sys.exit(main())
