"""Processes: the supervisor, worker processes, the socket table, systemd, daemonizing, privileges.

Owns: everything between the command line and one worker's event loop.
Must not import: `cli`, `sslh`, `tools`.
"""
