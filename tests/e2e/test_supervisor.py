"""The supervisor through the real daemon: reload under load, bad reloads, worker replacement, accept
spreading, privilege drop, --daemon with a PID file, exit codes. Every process is ended by PID."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import threading
import time
from collections import Counter

import pytest

from support.net import free_port, listening
from support.daemon import Daemon, NotifySocket, make_config, tree_pids
from support.supervision import config, exchange, status_field, TaggedBackend, uid_of

pytestmark = pytest.mark.timeout(60)

STATS = re.compile(r"epollmux\[(\d+)\] INFO epollmux\.worker: stats:\naccepted=(\d+)")


@pytest.fixture
def backends():
    made: list[TaggedBackend] = []

    def make(tag: bytes) -> TaggedBackend:
        made.append(TaggedBackend(tag))
        return made[-1]

    yield make
    for b in made:
        b.close()


def start(daemon, text: str, **kw) -> Daemon:
    return daemon().start(text, ready=True, **kw)


def reload_and_wait(d: Daemon, notify: NotifySocket) -> None:
    mark = len(notify.messages)
    d.signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING", "1", after=mark)
    notify.wait_for("READY", "1", after=reloading)


class Load:
    """Clients opening connections in a loop; records (start time, backend tag) and every failure."""

    def __init__(self, port: int, clients: int = 4):
        self.port = port
        self.results: list[tuple[float, bytes]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self) -> None:
        deadline = time.monotonic() + 40
        while not self.stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                tag = exchange(self.port, b"x" * 64)
            except Exception as exc:   # any failed connect or relay counts
                self.failures.append(repr(exc))
                continue
            self.results.append((started, tag))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def test_reload_under_load_loses_no_connection(tmp_path, daemon, backends, notify):
    a, b = backends(b"A"), backends(b"B")
    port = free_port()
    d = start(daemon, config(port, a.port), notify=notify)
    first_workers = d.wait_workers(2)
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert held.recv(1) == b"A"
    load = Load(port)
    try:
        time.sleep(0.3)
        d.write_config(config(port, b.port))            # the first reload changes the backend
        reload_and_wait(d, notify)
        for pid in first_workers:                       # the old workers have stopped accepting
            d.wait_log(f"epollmux[{pid}] INFO epollmux.worker: draining")
        switched = time.monotonic()
        for i in range(4):
            d.write_config(config(port, b.port, probe_timeout=3 + i))
            reload_and_wait(d, notify)
        time.sleep(0.3)
    finally:
        load.finish()
    assert load.failures == []
    tags = Counter(tag for _, tag in load.results)
    after = Counter(tag for started, tag in load.results if started > switched)
    print(f"\nreload under load: {len(load.results)} connections, by backend {dict(tags)}, "
          f"after the switch {dict(after)}; {notify.count('RELOADING')} reloads")
    assert tags[b"A"] > 0 and after[b"B"] > 0
    assert after[b"A"] == 0, "a connection opened after the switch reached the old backend"
    assert notify.count("RELOADING") == 5
    # the connection opened before the reloads still relays, to its old backend
    held.sendall(b"still here")
    assert held.recv(64) == b"still here"
    held.close()
    assert exchange(port) == b"B"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert "reload refused" not in d.log_text()


def test_bad_file_on_sighup_changes_nothing(tmp_path, daemon, backends, notify):
    a, b = backends(b"A"), backends(b"B")
    port = free_port()
    d = start(daemon, config(port, a.port), notify=notify)
    workers = d.wait_workers(2)
    d.write_config(make_config(port, {"all": {"probe": "nosuch", "backend": f"127.0.0.1:{b.port}"}}, workers="lots"))
    reload_and_wait(d, notify)
    text = d.wait_log("reload refused (")
    refused = [line for line in text.splitlines() if "reload refused:" in line]
    assert any("[global] workers" in line for line in refused), refused
    assert any("[routes.all] probe" in line for line in refused), refused
    assert d.workers() == workers
    assert exchange(port) == b"A"
    # a good file whose new address cannot be bound is refused too, and changes nothing
    taken = socket.create_server(("127.0.0.1", 0))
    d.write_config(config(port, b.port, listen=f"127.0.0.1:{port}, 127.0.0.1:{taken.getsockname()[1]}"))
    reload_and_wait(d, notify)
    d.wait_log("reload refused (", count=2)
    taken.close()
    assert d.workers() == workers
    assert exchange(port) == b"A"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_reload_binds_new_addresses_and_closes_removed_ones(tmp_path, daemon, backends):
    a = backends(b"A")
    old_port, new_port = free_port(), free_port()
    d = start(daemon, config(old_port, a.port))
    held = socket.create_connection(("127.0.0.1", old_port), timeout=10)
    assert held.recv(1) == b"A"
    d.write_config(config(0, a.port, listen=f"127.0.0.1:{new_port}"))
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded: generation 2")
    assert exchange(new_port) == b"A"
    held.close()                                  # the old workers finish draining
    d.wait_log(f"closed listening sockets no longer configured: 127.0.0.1:{old_port}")
    assert not listening(old_port)
    assert exchange(new_port) == b"A"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_config_free_mode_cannot_reload_and_keeps_serving(tmp_path, daemon, backends):
    a = backends(b"A")
    port = free_port()
    d = daemon().start(args=["--listen", f"127.0.0.1:{port}", "--anyprot", f"127.0.0.1:{a.port}"])
    d.wait_log("ready: ")
    d.signal(signal.SIGHUP)
    d.wait_log("reload is not possible")
    assert exchange(port) == b"A"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_killed_worker_is_replaced_and_service_continues(tmp_path, daemon, backends):
    a = backends(b"A")
    port = free_port()
    d = start(daemon, config(port, a.port))
    victim, survivor = d.wait_workers(2)
    os.kill(victim, signal.SIGKILL)
    d.wait_log(f"worker {victim} (generation 1) killed by SIGKILL unexpectedly")
    now = d.wait_workers(2, exclude={victim})
    assert survivor in now and victim not in now
    for _ in range(10):
        assert exchange(port) == b"A"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_accepts_spread_over_two_workers(tmp_path, daemon, backends):
    a = backends(b"A")
    port = free_port()
    d = start(daemon, config(port, a.port))
    workers = d.wait_workers(2)
    load = Load(port)
    deadline = time.monotonic() + 20
    while len(load.results) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    load.finish()
    assert load.failures == []
    d.signal(signal.SIGUSR1)
    text = d.wait_log(STATS, count=2)
    per_worker = {int(pid): int(n) for pid, n in STATS.findall(text)}
    print(f"\naccepts per worker over {len(load.results)} connections: {per_worker}")
    assert sorted(per_worker) == sorted(workers)
    assert sum(per_worker.values()) == len(load.results)
    assert all(n > 0 for n in per_worker.values()), per_worker
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


CANNOT_START = ("import sys\nimport epollmux.serve.worker as w\n"
                "def broken(self):\n    raise RuntimeError('worker cannot start')\n"
                "w.Worker.run = broken\nfrom epollmux.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def test_workers_that_cannot_start_stop_the_supervisor_with_exit_2(tmp_path, daemon, backends):
    a = backends(b"A")
    d = daemon().start(config(free_port(), a.port), python_code=CANNOT_START)
    assert d.wait(30) == 2
    text = d.log_text()
    assert "workers cannot start" in text
    assert text.count(" started (generation 1)") <= 4, "the supervisor must not fork in a loop"
    assert "ready: " not in text


def test_bind_failure_exits_2(tmp_path, daemon, backends):
    a = backends(b"A")
    taken = socket.create_server(("127.0.0.1", 0))
    d = daemon().start(config(taken.getsockname()[1], a.port))
    try:
        assert d.wait(20) == 2
    finally:
        taken.close()
    assert "cannot listen on" in d.log_text()


def test_unknown_user_exits_2(tmp_path, daemon, backends):
    a = backends(b"A")
    d = daemon().start(config(free_port(), a.port, user="no-such-user-here"))
    assert d.wait(20) == 2
    assert "unknown user 'no-such-user-here'" in d.log_text()


def _free_low_port() -> int:
    for port in range(1023, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024 on 127.0.0.1")


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs the test to run as root")
def test_workers_drop_to_nobody_and_serve_a_low_port(tmp_path, daemon, backends):
    a = backends(b"A")
    port = _free_low_port()
    nobody = pwd.getpwnam("nobody")
    d = start(daemon, config(port, a.port, user="nobody"))
    for pid in d.wait_workers(2):
        assert uid_of(pid) == [nobody.pw_uid] * 4
        assert status_field(pid, "Gid").split() == [str(nobody.pw_gid)] * 4
        assert status_field(pid, "Groups") == ""
    assert uid_of(d.pid)[0] == 0, "the supervisor keeps root to read the file and bind on reload"
    for _ in range(4):
        assert exchange(port) == b"A"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_daemon_mode_writes_pidfile_and_stops_cleanly(tmp_path, daemon, backends):
    a = backends(b"A")
    port = free_port()
    pidfile = tmp_path / "epollmux.pid"
    d = daemon().start(config(port, a.port), args=["--daemon", "--pidfile", str(pidfile)])
    assert d.wait(20) == 0                  # the command returns once the daemon has detached
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    d.seen.add(pid)
    d.wait_log("ready: ", detached=True)
    d.seen.update(tree_pids(pid))
    assert pid != d.pid
    assert exchange(port) == b"A"
    (tmp_path / "again").mkdir()
    again = daemon().start(config(free_port(), a.port), args=["--daemon", "--pidfile", str(pidfile)])
    assert again.wait(20) == 2              # refused on the terminal: the pidfile is held
    assert "held by running process" in again.log_text()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid)
    assert not pidfile.exists()


def test_reload_is_announced_only_once_old_workers_stopped_accepting(tmp_path, daemon, backends):
    """An old worker that has not yet handled its retirement still accepts on the shared listening socket:
    "reloaded" (and `--reload`'s "ok") waits until every old worker said it closed its listeners, so a client
    that connects after it reaches the new configuration. The old worker is held with SIGSTOP to make the
    window as long as the test needs."""
    a, b = backends(b"A"), backends(b"B")
    port = free_port()
    d = start(daemon, config(port, a.port))
    old = d.wait_workers(2)
    assert exchange(port) == b"A"
    d.write_config(config(port, b.port))
    os.kill(old[0], signal.SIGSTOP)
    try:
        d.signal(signal.SIGHUP)
        d.wait_log("generation 2: starting")
        d.wait_workers(2, exclude=set(old))
        deadline = time.monotonic() + 1.5      # the new workers are up; the old one cannot answer
        while time.monotonic() < deadline:
            assert "reloaded: generation 2" not in d.log_text(), "announced while an old worker may accept"
            time.sleep(0.05)
    finally:
        os.kill(old[0], signal.SIGCONT)
    d.wait_log("reloaded: generation 2")
    assert [exchange(port) for _ in range(20)] == [b"B"] * 20
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
