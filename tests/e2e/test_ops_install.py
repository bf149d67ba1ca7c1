"""`make install DESTDIR=STAGE PREFIX=P`: a staged tree that names P, never STAGE (shebangs, pyvenv.cfg,
compiled files), works once moved to P, and creates no system user."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from support.daemon import REPO

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed (Debian package make)")]

BARE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def test_destdir_tree_is_relocatable(tmp_path):
    stage, final = tmp_path / "stage", tmp_path / "final"
    made = subprocess.run(["make", "install", f"DESTDIR={stage}", f"PREFIX={final}", "SYSUSER=epollmux-no-such"],
                          cwd=REPO, capture_output=True, text=True, timeout=500)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "created system user" not in made.stdout
    staged = stage / final.relative_to("/")
    leaks = [str(p) for p in staged.rglob("*") if p.is_file() and not p.is_symlink()
             and str(stage).encode() in p.read_bytes()]
    assert leaks == [], f"the staging path is baked into {leaks[:10]}"
    launcher = (staged / "lib" / "epollmux" / "bin" / "epollmux").read_text()
    # the shebang, or (a path over 127 bytes) pip's `#!/bin/sh` + `exec PYTHON` form
    assert f"{final}/lib/epollmux/bin/python3" in "\n".join(launcher.splitlines()[:3]), launcher[:300]

    shutil.move(str(staged), str(final))
    shutil.rmtree(stage)
    command = final / "bin" / "epollmux"
    version = subprocess.run([str(command), "--version"], env=BARE_ENV, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("epollmux "), version.stderr
    conf = tmp_path / "small.conf"
    conf.write_text("[listen]\n  [[a]]\n  address = 127.0.0.1:4443\n[routes]\n  [[r]]\n  probe = any\n"
                    "  backend = 127.0.0.1:80\n")
    check = subprocess.run([str(command), "-c", str(conf), "--check"], env=BARE_ENV, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    traceback_path = subprocess.run(
        [str(final / "lib" / "epollmux" / "bin" / "python3"), "-c",
         "import epollmux.cli as c; print(c.__file__)"], capture_output=True, text=True, env=BARE_ENV, cwd=tmp_path)
    assert traceback_path.stdout.startswith(str(final)), traceback_path.stdout + traceback_path.stderr
