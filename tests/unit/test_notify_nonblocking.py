"""process/systemd.py: a notification socket nobody reads never blocks the supervisor. The manager's queue
holds net.unix.max_dgram_qlen datagrams (10 by default); the STATUS= updates past it are dropped, not
waited for (before: the supervisor's loop hung in the send, and with it metrics, reload and stop)."""

from __future__ import annotations

import socket
import threading

from epollmux.process import systemd


def test_status_updates_to_an_unread_socket_do_not_block(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(path)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", path)              # sdnotify reads the environment itself
        notifier = systemd.Notifier({"NOTIFY_SOCKET": path})
        assert notifier.enabled
        done = threading.Event()

        def updates() -> None:
            for i in range(200):
                notifier.status(f"{i} UDP flows")
            done.set()
        threading.Thread(target=updates, daemon=True).start()
        assert done.wait(20), "a STATUS= update blocked on the full notification queue"
        manager.settimeout(5)
        assert manager.recv(4096) == b"STATUS=0 UDP flows"      # what fitted was delivered, in order
        notifier.close()
    finally:
        manager.close()
