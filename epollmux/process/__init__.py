"""Processes: the supervisor, worker processes, the socket table, systemd, daemonizing, privileges.

Must not import: epollmux.tools, cli.
"""
