"""The man pages and the bash completion in doc/ are what `python -m epollmux.tools.manpage` makes from the
argparse parser and the configspec now (one source for both), and man(1) renders them without warnings."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from support.daemon import REPO
from epollmux import cli
from epollmux.tools import manpage


@pytest.mark.parametrize("name", sorted(manpage.OUTPUTS))
def test_generated_file_is_current(name):
    committed = (REPO / "doc" / name).read_text()
    assert committed == manpage.OUTPUTS[name](), \
        f"doc/{name} is stale: run `python -m epollmux.tools.manpage doc` and commit the result"


def test_every_option_and_key_is_documented():
    page8, page5 = manpage.epollmux_8(), manpage.epollmux_conf_5()
    for action in cli.parser()._actions:
        for option in action.option_strings:
            assert f"\\fB{manpage.esc(option)}\\fR" in page8, option
    for key in ("workers", "stats_socket", "proxy_protocol", "tls_cert", "backend_sni", "user"):
        assert f"\\fB{manpage.esc(key)}\\fR" in page5, key


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed (Debian package man-db)")
@pytest.mark.parametrize("name", ["epollmux.8", "epollmux.conf.5"])
def test_man_renders_without_warnings(name):
    out = subprocess.run(["man", "--warnings", "-l", str(REPO / "doc" / name)], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MANWIDTH": "80"})
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert "epollmux" in out.stdout


def test_bash_completion_completes_options():
    if shutil.which("bash") is None:
        pytest.skip("bash missing")
    script = (f"source {REPO / 'doc' / 'epollmux.bash-completion'}; COMP_WORDS=(epollmux --rel); COMP_CWORD=1; "
              "_epollmux; echo \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["--reload"], out.stdout + out.stderr
