"""The shipped systemd unit as an administrator runs it: the daemon started with exactly the unit's
capability bounding set and user (parsed from etc/epollmux.service, applied with setpriv) survives
reload, stats and stop, and serves a udp: listener below 1024 (workers keep CAP_NET_BIND_SERVICE); the unit gives the stats socket a writable /run/epollmux; `epollmux --reload`
(the unit's ExecReload) reports a refused file with a non-zero exit and the errors."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from support.daemon import REPO, Daemon, make_config, tree_pids
from support.net import free_port
from support.supervision import TaggedBackend, config
from support.udp import UdpClient, UdpEcho, low_udp_port

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv missing (util-linux)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the unit's supervisor runs as root")]

UNIT = REPO / "etc" / "epollmux.service"


def unit_settings() -> dict[str, str]:
    """The [Service] assignments of the shipped unit (last one wins, as in systemd)."""
    out, section = {}, ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def setpriv_code(bounding: list[str]) -> str:
    """Python that re-execs the daemon under setpriv with this bounding set (a wrapper so that the
    supervisor is the test's child, as under systemd)."""
    caps = ",".join(["-all"] + [f"+{c.lower().removeprefix('cap_')}" for c in bounding])
    return ("import os, sys\n"
            f"os.execvp('setpriv', ['setpriv', '--bounding-set={caps}', '--inh-caps=-all', '--no-new-privs', "
            f"sys.executable, '-m', 'epollmux'] + sys.argv[1:])\n")


@pytest.fixture
def backend():
    b = TaggedBackend(b"A")
    yield b
    b.close()


def _bounded_config(tmp_path, port: int, backend_port: int) -> str:
    return config(port, backend_port, user="nobody", sections=f"[metrics]\nstats_socket = {tmp_path}/run/epollmux.sock\n")


def test_unit_capabilities_survive_reload_stats_stop(tmp_path, daemon, backend):
    settings = unit_settings()
    assert "User" not in settings, "the test assumes the supervisor runs as root (User= unset)"
    bounding = settings["CapabilityBoundingSet"].split()
    d = daemon().start(_bounded_config(tmp_path, free_port(), backend.port), python_code=setpriv_code(bounding))
    d.wait_log("ready: ", timeout=30)
    supervisor = d.pid
    assert int(_status(supervisor, "CapBnd"), 16) == _mask(bounding)
    first = d.wait_workers(2)
    nobody = pwd.getpwnam("nobody").pw_uid
    assert all(_uid(pid) == nobody for pid in first)

    d.signal(signal.SIGHUP)
    d.wait_log("reloaded: generation 2 accepting", timeout=30)
    d.wait_workers(2, exclude=set(first), timeout=30)       # the old generation is gone
    d.signal(signal.SIGUSR1)
    d.wait_log("show stat:", timeout=30)
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log_text()[-3000:]
    assert "permission denied" not in d.log_text() and "Traceback" not in d.log_text()
    assert [p for p in tree_pids(supervisor) if p != supervisor] == []
    assert not [p for p in d.seen if os.path.exists(f"/proc/{p}")], "workers outlived the supervisor"


def test_refused_signal_is_logged_not_fatal(tmp_path, daemon, backend):
    """Without CAP_KILL (the unit before the fix) the supervisor logs the refusal and keeps running."""
    bounding = [c for c in unit_settings()["CapabilityBoundingSet"].split() if c != "CAP_KILL"]
    d = daemon().start(_bounded_config(tmp_path, free_port(), backend.port), python_code=setpriv_code(bounding))
    d.wait_log("ready: ", timeout=30)
    d.signal(signal.SIGUSR1)
    d.wait_log("cannot send SIGUSR1 to worker", timeout=30)
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded: generation 2", timeout=30)
    d.wait_log("cannot send SIGUSR2 to worker", timeout=30)     # the old workers are told to retire
    assert d.proc.poll() is None, d.log_text()[-3000:]
    assert "Traceback" not in d.log_text()


def test_unit_gives_the_stats_socket_a_runtime_directory():
    settings = unit_settings()
    assert settings.get("ProtectSystem") == "strict"
    assert settings.get("RuntimeDirectory") == "epollmux"
    example = (REPO / "etc" / "epollmux.conf").read_text()
    assert re.search(r"^stats_socket = /run/epollmux/epollmux\.sock$", example, re.M)
    assert re.search(r"^user = epollmux\b", example, re.M)


def test_exec_reload_reports_the_outcome(tmp_path, daemon, backend):
    settings = unit_settings()
    assert settings["ExecReload"].split()[-1] == "--reload"
    assert settings["Type"] == "notify"      # notify-reload needs systemd 253; Debian 12 has 252
    port = free_port()
    text = _bounded_config(tmp_path, port, backend.port).replace("user = nobody", "")
    d = daemon().start(text, ready=True)
    ok = _reload(d)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: generation 2 accepting"), ok.stdout + ok.stderr

    with socket.socket() as taken:        # a listener the daemon cannot bind: the file is valid, the reload is not
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        d.write_config(text.replace(f"address = 127.0.0.1:{port}", f"address = 127.0.0.1:{port}, 127.0.0.1:{busy}"))
        refused = _reload(d)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith("refused: ") and f"127.0.0.1:{busy}" in refused.stderr, refused.stderr
    assert "reload refused" in d.log_text()


def _reload(d: Daemon) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MAINPID"}
    return subprocess.run([sys.executable, "-m", "epollmux", "-c", str(d.config_path), "--reload"], cwd=REPO,
                          capture_output=True, text=True, timeout=90, env=env)


def _status(pid: int, field: str) -> str:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return line.split()[1]
    return ""


def _uid(pid: int) -> int:
    return int(_status(pid, "Uid"))


def _mask(caps: list[str]) -> int:
    numbers = {"CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12,
               "CAP_NET_RAW": 13}
    return sum(1 << numbers[c] for c in caps)


def test_unit_capabilities_serve_a_udp_port_below_1024(tmp_path, daemon):
    """A udp: listener below 1024 under exactly the unit's bounding set and a worker user: the workers keep
    CAP_NET_BIND_SERVICE alone and each new flow binds its own socket to the port (README "UDP: listeners,
    flows and workers"); without the capability in the unit the flows could not start."""
    bounding = unit_settings()["CapabilityBoundingSet"].split()
    assert "CAP_NET_BIND_SERVICE" in unit_settings()["AmbientCapabilities"].split()
    echo = UdpEcho(b"E:")
    try:
        port = low_udp_port()
        text = make_config({"u": f"udp:127.0.0.1:{port}"}, {"all": {"probe": "any", "backend": echo.address}},
                           workers=2, user="nobody",
                           sections=f"[metrics]\nstats_socket = {tmp_path}/run/epollmux.sock\n")
        d = daemon().start(text, python_code=setpriv_code(bounding))
        d.wait_log("ready: ", timeout=30)
        workers = d.wait_workers(2)
        nobody = pwd.getpwnam("nobody").pw_uid
        for pid in workers:
            assert _uid(pid) == nobody and int(_status(pid, "CapEff"), 16) == _mask(["CAP_NET_BIND_SERVICE"])
        clients = [UdpClient(port) for _ in range(8)]
        for i, c in enumerate(clients):
            assert c.ask(b"q%d" % i) == b"E:q%d" % i
            assert c.ask(b"r%d" % i) == b"E:r%d" % i
            c.close()
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.log_text()[-3000:]
        assert "Traceback" not in d.log_text() and "cannot open a flow socket" not in d.log_text()
    finally:
        echo.close()
