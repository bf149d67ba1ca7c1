"""`epollmux --reload`: ask the running daemon to reload its file and report the outcome (systemd's
ExecReload), so `systemctl reload` fails with the errors when the new file is refused.

Owns: the client side of the stats socket's `reload` command: it connects to `[metrics] stats_socket` of
the given file, sends `reload`, prints the answer and maps it to an exit code: 0 ok, 1 refused or
abandoned (the running configuration stays), 2 no answer. Without a stats socket it falls back to SIGHUP
to $MAINPID (what systemd sets for ExecReload), whose outcome only the log shows.
Must not import the supervisor: it talks to it only through the socket.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

EXIT_OK, EXIT_REFUSED, EXIT_NO_ANSWER = 0, 1, 2
TIMEOUT = 70.0      # above the daemon's own limit for a reload's `reload` client (RELOAD_TIMEOUT, 60 s)


def ask(path: str, command: str, timeout: float = TIMEOUT) -> str:
    """Send one command to the stats socket; the whole answer (the daemon closes after it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(data)


def reload(cfg, environ=os.environ) -> int:
    path = cfg.metrics.stats_socket
    if not path:
        pid = environ.get("MAINPID", "")
        if not pid.isdigit():
            print(f"{cfg.source}: --reload needs [metrics] stats_socket (or $MAINPID for a plain SIGHUP)",
                  file=sys.stderr)
            return EXIT_REFUSED
        os.kill(int(pid), signal.SIGHUP)
        print(f"{cfg.source}: no [metrics] stats_socket: sent SIGHUP to {pid}; the outcome is in the log")
        return EXIT_OK
    try:
        answer = ask(path, "reload")
    except OSError as exc:
        print(f"{path}: cannot ask the daemon to reload: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if answer.startswith("ok"):
        print(answer, end="")
        return EXIT_OK
    if not answer:
        print(f"{path}: the daemon closed without an answer (still reloading? see the log)", file=sys.stderr)
        return EXIT_NO_ANSWER
    print(answer, end="", file=sys.stderr)
    return EXIT_REFUSED
