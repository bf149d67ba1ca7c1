"""`make install PREFIX=<tmp>`: the installed command works with no environment set up, the units
carry PREFIX and pass `systemd-analyze verify`; `make uninstall` leaves no file behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from support.daemon import REPO

MAKEFILE = REPO / "Makefile"


def _targets() -> set[str]:
    try:
        text = MAKEFILE.read_text()
    except OSError:
        return set()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:", text, re.M))


pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not {"install", "uninstall"} <= _targets(),
                       reason="the Makefile has no install/uninstall targets yet"),
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed (Debian package make)"),
]

BARE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}    # no PYTHONPATH, no venv, no HOME


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)


def _user_exists(name: str) -> bool:
    return _run(["getent", "passwd", name]).returncode == 0


@pytest.fixture
def sysuser():
    """The example's `user = epollmux`, which make install creates as root; removed again if it did."""
    existed = _user_exists("epollmux")
    yield "epollmux"
    if not existed and _user_exists("epollmux"):
        _run(["userdel", "epollmux"])


def test_make_install_then_uninstall(tmp_path, sysuser):
    prefix = tmp_path / "prefix"
    installed = _run(["make", "install", f"PREFIX={prefix}"], cwd=REPO, timeout=500)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    if os.geteuid() == 0:
        assert _user_exists(sysuser), installed.stdout
    for page in ("share/man/man8/epollmux.8", "share/man/man5/epollmux.conf.5",
                 "share/bash-completion/completions/epollmux"):
        assert (prefix / page).is_file(), page

    command = prefix / "bin" / "epollmux"
    conf = prefix / "etc" / "epollmux" / "epollmux.conf"
    version = _run([str(command), "--version"], env=BARE_ENV, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("epollmux "), version.stderr
    for args in (["-c", str(conf), "--check"], ["--check"]):       # the default file is PREFIX's
        check = _run([str(command), *args], env=BARE_ENV, cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"{conf}: OK" in check.stdout

    unit = prefix / "lib" / "systemd" / "system" / "epollmux.service"
    text = unit.read_text()
    assert "@PREFIX@" not in text
    assert f"ExecStart={command} -c {conf}" in text
    if shutil.which("systemd-analyze"):
        units = [u.name for u in unit.parent.glob("epollmux.*")]
        # Documentation=man:... is checked with man(1): the pages are under PREFIX, not in man's usual path
        verify = _run(["systemd-analyze", "verify", *units], cwd=unit.parent,
                      env={**os.environ, "MANPATH": f"{prefix / 'share' / 'man'}:"})
        complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if "epollmux" in line]
        assert verify.returncode == 0 and not complaints, verify.stdout + verify.stderr

    removed = _run(["make", "uninstall", f"PREFIX={prefix}"], cwd=REPO)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    left = [str(p) for p in prefix.rglob("*") if p.is_file() or p.is_symlink()] if prefix.exists() else []
    assert left == [], f"make uninstall left {left[:20]}"
