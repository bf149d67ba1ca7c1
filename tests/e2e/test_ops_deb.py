"""`make deb` as an administrator uses it: the package builds with plain dpkg-deb, lintian reports no
errors, `apt-get install ./epollmux_*.deb` gives a working `epollmux --check` on the shipped
/etc/epollmux/epollmux.conf, the epollmux system user, man pages, completion and units that
`systemd-analyze verify` accepts; `apt-get purge` removes all of it, the user included. The README's
set-up line, run verbatim, installs the package and leaves the daemon routing on the example config.
Skipped (with the reason) where the dpkg tools or root are missing, or epollmux is already installed."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support.daemon import REPO

TOOLS = ("dpkg-deb", "fakeroot", "apt-get", "dpkg")
pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                       reason=f"needs {', '.join(TOOLS)} (Debian packages dpkg-dev fakeroot apt)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="installing a package needs root"),
]

FILES = ["/usr/bin/epollmux", "/etc/epollmux/epollmux.conf", "/lib/systemd/system/epollmux.service",
         "/lib/systemd/system/epollmux.socket", "/usr/share/man/man8/epollmux.8.gz",
         "/usr/share/man/man5/epollmux.conf.5.gz", "/usr/share/bash-completion/completions/epollmux",
         "/usr/share/doc/epollmux/copyright", "/usr/lib/python3/dist-packages/epollmux/cli.py"]


def run(*cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def installed() -> bool:
    out = run("dpkg-query", "-W", "-f=${Status}", "epollmux")
    return out.returncode == 0 and "installed" in out.stdout and "not-installed" not in out.stdout


def apt(*args: str) -> subprocess.CompletedProcess:
    return run("apt-get", "-o", "DPkg::Lock::Timeout=900", "-y", "-q", *args, timeout=900)


@pytest.fixture(scope="module")
def deb():
    """The package built from this checkout. The host's package database is one per machine: two test runs
    at once (two checkouts) take turns here instead of installing and purging under each other."""
    with open("/tmp/epollmux-deb-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed():
            pytest.skip("an epollmux package is already installed on this host: not replacing it")
        built = run(str(REPO / "packaging" / "deb" / "build.sh"))
        assert built.returncode == 0, built.stdout + built.stderr
        path = Path(built.stdout.strip().splitlines()[-1])
        assert path.name.startswith("epollmux_") and path.name.endswith("_all.deb") and path.is_file()
        yield path


def test_lintian_reports_no_errors(deb):
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (Debian package lintian)")
    out = run("lintian", "--allow-root", str(deb))
    errors = [line for line in out.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], out.stdout


def test_install_check_verify_purge(deb):
    user_before = run("getent", "passwd", "epollmux").returncode == 0
    try:
        done = apt("install", str(deb))
        assert done.returncode == 0, done.stdout + done.stderr
        missing = [f for f in FILES if not os.path.exists(f)]
        assert missing == [], missing
        assert run("getent", "passwd", "epollmux").returncode == 0, "no epollmux system user"
        conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "epollmux").stdout
        assert "/etc/epollmux/epollmux.conf" in conffiles

        check = run("/usr/bin/epollmux", "--check")          # the default file is /etc/epollmux/epollmux.conf
        assert check.returncode == 0, check.stdout + check.stderr
        assert "/etc/epollmux/epollmux.conf: OK" in check.stdout
        assert run("/usr/bin/epollmux", "--version").stdout.startswith("epollmux ")

        if shutil.which("systemd-analyze"):
            verify = run("systemd-analyze", "verify", "/lib/systemd/system/epollmux.service",
                         "/lib/systemd/system/epollmux.socket")
            complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if "epollmux" in line]
            assert verify.returncode == 0 and not complaints, verify.stdout + verify.stderr
    finally:
        purged = apt("purge", "epollmux")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not installed()
    left = [f for f in FILES + ["/etc/epollmux", "/usr/lib/python3/dist-packages/epollmux"] if os.path.exists(f)]
    assert left == [], f"apt-get purge left {left}"
    if not user_before:
        assert run("getent", "passwd", "epollmux").returncode != 0, "purge left the epollmux user"


def setup_commands() -> list[str]:
    """The indented command lines of the README's "Set up on a fresh Debian machine" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Set up on a fresh Debian machine", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### ", 1)[0]
    return [line[4:] for line in section.splitlines() if line.startswith("    ") and line.strip()]


def test_readme_has_exactly_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2 and commands[1] == "make test", commands
    assert "apt-get install -y ./build/epollmux_" in commands[0], commands


def test_readme_setup_line_installs_and_runs_the_example(deb, tmp_path):
    """The README's first command, run verbatim from the checkout, leaves a daemon routing on the example
    config's 127.0.0.1:4443: an SSH client's first bytes get an access line naming route ssh."""
    probe = socket.socket()
    try:
        if probe.connect_ex(("127.0.0.1", 4443)) == 0:
            pytest.skip("something already listens on 127.0.0.1:4443 (the example config's port)")
    finally:
        probe.close()
    log, pidfile = Path("/var/log/epollmux.log"), Path("/run/epollmux.pid")
    log_before = log.read_text() if log.exists() else ""
    pid = None
    try:
        apt_config = tmp_path / "apt.conf"          # the README's apt-get waits for a busy dpkg lock here
        apt_config.write_text('DPkg::Lock::Timeout "900";\n')
        line = subprocess.run(["bash", "-c", f"cd {REPO} && {setup_commands()[0]}"], capture_output=True,
                              text=True, timeout=900, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                                                           "DEBIAN_FRONTEND": "noninteractive",
                                                           "APT_CONFIG": str(apt_config)})
        assert line.returncode == 0, line.stdout + line.stderr
        assert installed()
        if Path("/run/systemd/system").is_dir():
            assert run("systemctl", "is-active", "epollmux").stdout.strip() == "active"
            return
        pid = int(pidfile.read_text())
        with socket.create_connection(("127.0.0.1", 4443), timeout=10) as client:
            client.sendall(b"SSH-2.0-OpenSSH_9.2 readme\r\n")
            client.settimeout(10)
            try:                                   # whatever the example's ssh backend answers, or a reset
                client.recv(100)                   # when nothing listens there
            except ConnectionResetError:
                pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "route=ssh" not in log.read_text()[len(log_before):]:
            time.sleep(0.1)
        assert "route=ssh" in log.read_text()[len(log_before):], log.read_text()[len(log_before):]
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
            assert not Path(f"/proc/{pid}").exists(), "the daemon did not stop on SIGTERM"
        if installed():
            purged = apt("purge", "epollmux")
            assert purged.returncode == 0, purged.stdout + purged.stderr
        if log.exists():
            log.write_text(log_before) if log_before else log.unlink()
