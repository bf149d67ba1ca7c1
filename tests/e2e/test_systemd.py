"""systemd integration through the real daemon: sd_notify messages on a socket the test owns, the
watchdog, socket activation with the test playing systemd, and the unit files."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from support.daemon import REPO
from support.net import free_port, listening, wait_port

from support.supervision import config, exchange, TaggedBackend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend():
    b = TaggedBackend(b"A")
    yield b
    b.close()


def test_notify_ready_status_watchdog_reload_stopping(tmp_path, daemon, backend, notify):
    port = free_port()
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}
    d = daemon().start(config(port, backend.port), env=env, watchdog_self=True)
    ready = notify.wait_for("READY", "1")
    assert notify.messages[ready]["STATUS"].startswith("2 workers")
    assert len(d.workers()) == 2
    assert exchange(port) == b"A"
    # watchdog pings every 0.2 s (half of WATCHDOG_USEC) while the workers live
    first = notify.wait_for("WATCHDOG", "1", after=ready)
    notify.wait_for("WATCHDOG", "1", after=first + 1)
    # live counts: an open connection shows in a STATUS= update
    with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
        assert held.recv(1) == b"A"
        deadline = time.monotonic() + 10
        while not any(m.get("STATUS", "").startswith("2 workers, 1 open connection,") for m in notify.messages):
            assert time.monotonic() < deadline, notify.messages
            notify.collect(0.2)
    assert any("connections/s" in m.get("STATUS", "") for m in notify.messages)

    mark = len(notify.messages)
    d.signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING", "1", after=mark)
    assert notify.messages[reloading]["MONOTONIC_USEC"].isdigit()
    usec = int(notify.messages[reloading]["MONOTONIC_USEC"])
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 30
    notify.wait_for("READY", "1", after=reloading)
    assert exchange(port) == b"A"

    mark = len(notify.messages)
    d.signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1", after=mark)
    assert d.wait() == 0
    assert notify.count("WATCHDOG") >= 2


def test_watchdog_only_while_workers_report(tmp_path, daemon, backend, notify):
    port = free_port()
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}
    d = daemon().start(config(port, backend.port), env=env, watchdog_self=True)
    notify.wait_for("READY", "1")
    workers = d.wait_workers(2)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)        # hung workers: they stop reporting
    try:
        notify.collect(0.8)                 # twice WATCHDOG_USEC: the last reports go stale
        mark = len(notify.messages)
        notify.collect(0.8)
        assert notify.count("WATCHDOG", after=mark) == 0
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    mark = len(notify.messages)
    notify.wait_for("WATCHDOG", "1", after=mark)
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_watchdog_for_another_pid_is_not_ours(tmp_path, daemon, backend, notify):
    port = free_port()
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    d = daemon().start(config(port, backend.port), env=env)
    notify.wait_for("READY", "1")
    notify.collect(0.5)
    assert notify.count("WATCHDOG") == 0
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def _systemd_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def test_socket_activation_by_address_serves_without_binding(tmp_path, daemon, backend):
    port = free_port()
    inherited = _systemd_socket(port)   # no SO_REUSEADDR: a bind of the same address by the daemon fails
    d = daemon().start(config(port, backend.port), env={"LISTEN_FDS": "1"}, listen_fd=inherited.fileno())
    inherited.close()                   # the daemon holds the only copy now
    d.wait_log("ready: 2 workers accepting")
    assert "cannot listen" not in d.log_text()
    for _ in range(4):
        assert exchange(port) == b"A"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_socket_activation_by_name_takes_the_listener(tmp_path, daemon, backend):
    port, configured = free_port(), free_port()
    inherited = _systemd_socket(port)
    env = {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "main"}
    d = daemon().start(config(configured, backend.port), env=env, listen_fd=inherited.fileno())
    inherited.close()
    d.wait_log("ready: 2 workers accepting")
    assert exchange(port) == b"A"
    assert not listening(configured), "the named listener's own address must not be bound"
    d.signal(signal.SIGHUP)             # a reload keeps serving on the adopted socket
    d.wait_log("reloaded: generation 2")
    assert exchange(port) == b"A"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_listen_fds_for_another_pid_are_ignored(tmp_path, daemon, backend):
    port = free_port()
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    d = daemon().start(config(port, backend.port), env=env)
    wait_port(port, proc=d.proc)
    assert exchange(port) == b"A"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (Debian package systemd)")
def test_units_pass_systemd_analyze_verify(tmp_path):
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    units = prefix / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    command = prefix / "bin" / "epollmux"
    command.write_text("#!/bin/sh\nexit 0\n")
    command.chmod(0o755)
    for name in ("epollmux.service", "epollmux.socket"):
        text = (REPO / "etc" / name).read_text()
        (units / name).write_text(text.replace("@PREFIX@", str(prefix)))
    assert "@PREFIX@" not in (units / "epollmux.service").read_text()
    man = prefix / "share" / "man"           # Documentation=man:... is checked with man(1)
    for page, section in (("epollmux.8", "man8"), ("epollmux.conf.5", "man5")):
        (man / section).mkdir(parents=True, exist_ok=True)
        (man / section / page).write_text((REPO / "doc" / page).read_text())
    result = subprocess.run(["systemd-analyze", "verify", "epollmux.service", "epollmux.socket"],
                            cwd=units, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "MANPATH": f"{man}:"})
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "epollmux" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
    service = (units / "epollmux.service").read_text()
    assert "Type=notify" in service
    assert f"ExecStart={prefix}/bin/epollmux -c {prefix}/etc/epollmux/epollmux.conf" in service
