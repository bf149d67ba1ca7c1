"""Cross-key checks (`--check`, start, reload) and the configuration messages an administrator reads."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import textwrap

import pytest

from support.daemon import REPO
from epollmux import checks, config

BASE = """
[global]
{glob}
[listen]
  [[a]]
  address = {a}
{more_listen}
[routes]
  [[ssh]]
  probe = ssh
  backend = 127.0.0.1:22
{more_routes}
{metrics}
"""


def make(tmp_path, *, glob="", a="127.0.0.1:4443", more_listen="", more_routes="", metrics=""):
    path = tmp_path / "c.conf"
    path.write_text(textwrap.dedent(BASE.format(glob=glob, a=a, more_listen=more_listen,
                                                more_routes=more_routes, metrics=metrics)))
    return str(path)


def found(tmp_path, local=(), **kw) -> checks.Findings:
    cfg = config.load_file(make(tmp_path, **kw))
    return checks.run(cfg, local={ipaddress.ip_address(a) for a in local})


def check_cli(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "epollmux", "-c", path, "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_clean_config_has_no_findings(tmp_path):
    f = found(tmp_path)
    assert f.errors == [] and f.warnings == []


def test_unknown_user_and_group_fail_check(tmp_path):
    path = make(tmp_path, glob="user = no-such-user-x\ngroup = no-such-group-x")
    out = check_cli(path)
    assert out.returncode == 1
    assert f"{path}: [global] user: unknown user 'no-such-user-x' on this host" in out.stderr
    assert f"{path}: [global] group: unknown group 'no-such-group-x' on this host" in out.stderr


def test_known_user_by_name_or_number_passes(tmp_path):
    assert found(tmp_path, glob="user = root\ngroup = 0").errors == []


def test_same_address_in_two_listeners(tmp_path):
    f = found(tmp_path, more_listen="  [[b]]\n  address = 127.0.0.1:4443")
    assert f.errors == [f"{tmp_path}/c.conf: [listen.b] address: '127.0.0.1:4443' is also an address of [listen.a]"]


def test_same_address_twice_in_one_listener(tmp_path):
    f = found(tmp_path, a="127.0.0.1:4443, 127.0.0.1:4443")
    assert f.errors == [f"{tmp_path}/c.conf: [listen.a] address: '127.0.0.1:4443' is named twice in this listener"]


def test_wildcard_beside_its_own_address_overlaps(tmp_path):
    f = found(tmp_path, a="0.0.0.0:4443", more_listen="  [[b]]\n  address = 127.0.0.1:4443")
    assert len(f.errors) == 1 and "overlaps '0.0.0.0:4443' of [listen.a]" in f.errors[0]
    # IPv6 wildcards are v6-only here: 0.0.0.0 and [::] on one port are two sockets
    assert found(tmp_path, a="0.0.0.0:4443, [::]:4443").errors == []


def test_metrics_on_a_listener_address(tmp_path):
    f = found(tmp_path, metrics="[metrics]\naddress = 127.0.0.1:4443")
    assert f.errors == [f"{tmp_path}/c.conf: [metrics] address: '127.0.0.1:4443' is also where [listen.a] "
                        "listens ('127.0.0.1:4443'): use another port"]


def test_backend_equal_to_own_listener(tmp_path):
    f = found(tmp_path, more_routes="  [[web]]\n  probe = tls\n  backend = 127.0.0.1:4443")
    assert len(f.errors) == 1
    assert f.errors[0].startswith(f"{tmp_path}/c.conf: [routes.web] backend: '127.0.0.1:4443' is the daemon's own")


@pytest.mark.parametrize("backend", ["127.0.0.1:443", "127.0.0.7:443", "192.0.2.99:443", "localhost:443"])
def test_backend_on_any_local_address_of_a_wildcard_listener(tmp_path, backend):
    """The example's own comment: listen on 0.0.0.0:443 and keep `https` -> 127.0.0.1:443."""
    f = found(tmp_path, a="0.0.0.0:443", local=["192.0.2.99"],
              more_routes=f"  [[https]]\n  probe = tls\n  backend = {backend}")
    assert len(f.errors) == 1 and "a wildcard listener takes every local address" in f.errors[0]


def test_backend_elsewhere_on_the_same_port_is_fine(tmp_path):
    f = found(tmp_path, a="0.0.0.0:443", local=["192.0.2.99"],
              more_routes="  [[https]]\n  probe = tls\n  backend = 198.51.100.7:443")
    assert f.errors == []
    f = found(tmp_path, a="127.0.0.1:443", more_routes="  [[https]]\n  probe = tls\n  backend = 127.0.0.2:443")
    assert f.errors == []


def test_local_addresses_lists_this_hosts_interfaces():
    local = checks.local_addresses()
    assert all(not ip.is_unspecified for ip in local)
    assert local, "no address read from /proc/net"


def test_syslog_without_dev_log_fails_check_not_start(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "DEV_LOG", str(tmp_path / "no-log-socket"))
    cfg = config.load_file(make(tmp_path, glob="log_target = syslog"))
    assert [e for e in checks.run(cfg).errors if "[global] log_target: syslog needs" in e]
    assert checks.run(cfg, starting=True).errors == []
    monkeypatch.setattr(checks, "DEV_LOG", str(tmp_path))     # exists
    assert checks.run(cfg).errors == []


def test_unfiltered_tls_route_shadows_an_sni_route(tmp_path):
    f = found(tmp_path, more_routes="  [[any_tls]]\n  probe = tls\n  backend = 127.0.0.1:1\n"
                                    "  [[named]]\n  probe = tls\n  sni = b.test\n  backend = 127.0.0.1:2")
    assert f.errors == []
    assert f.warnings == [f"{tmp_path}/c.conf: warning: [routes.named]: can never be chosen on [listen.a]: the "
                          "earlier route 'any_tls' (probe tls, no sni/alpn filter) takes every client it would "
                          "(sni b.test)"]


def test_two_routes_with_the_same_sni(tmp_path):
    f = found(tmp_path, more_routes="  [[one]]\n  probe = tls\n  sni = a.test\n  backend = 127.0.0.1:1\n"
                                    "  [[two]]\n  probe = tls\n  sni = a.test\n  alpn = h2\n  backend = 127.0.0.1:2\n"
                                    "  [[three]]\n  probe = tls\n  sni = b.test\n  backend = 127.0.0.1:3")
    assert len(f.warnings) == 1 and "[routes.two]: can never be chosen" in f.warnings[0]
    assert "'one' (probe tls, sni a.test)" in f.warnings[0]


def test_route_no_listener_uses(tmp_path):
    f = found(tmp_path, a="127.0.0.1:4443\n  routes = ssh", more_routes="  [[spare]]\n  probe = any\n  backend = 127.0.0.1:1")
    assert f.warnings == [f"{tmp_path}/c.conf: warning: [routes.spare]: no listener uses this route (each [listen] "
                          "routes list leaves it out, and no inner_routes names it)"]


def test_check_prints_warnings_and_passes(tmp_path):
    path = make(tmp_path, a="127.0.0.1:4443\n  routes = ssh", more_routes="  [[spare]]\n  probe = any\n  backend = 127.0.0.1:1")
    out = check_cli(path)
    assert out.returncode == 0, out.stderr
    assert "warning: [routes.spare]" in out.stderr
    assert out.stdout.strip() == f"{path}: OK (1 listener, 2 routes)"


def test_start_refuses_a_self_backend(tmp_path):
    path = make(tmp_path, more_routes="  [[web]]\n  probe = tls\n  backend = 127.0.0.1:4443")
    out = subprocess.run([sys.executable, "-m", "epollmux", "-c", path], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert "[routes.web] backend: '127.0.0.1:4443' is the daemon's own listener" in out.stderr


# ---------------------------------------------------------------- messages of config.py
def problems(tmp_path, text: str) -> list[str]:
    path = tmp_path / "m.conf"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(config.ConfigError) as info:
        config.load_file(str(path))
    return [p.replace(f"{path}: ", "") for p in info.value.problems]


GOOD_TAIL = "[listen]\n  [[a]]\n  address = 127.0.0.1:1\n[routes]\n  [[r]]\n  probe = any\n  backend = 127.0.0.1:2\n"


def test_top_level_section_typo_is_named_as_such(tmp_path):
    assert problems(tmp_path, GOOD_TAIL + "[route]\n  [[x]]\n  probe = ssh\n") == [
        "[route]: unknown section (the sections are [global], [metrics], [listen], [routes]); did you mean [routes]?"]


def test_key_before_any_section(tmp_path):
    assert problems(tmp_path, "workers = 2\n" + GOOD_TAIL) == [
        "workers: a key before any section header (put it under [global] or the section it belongs to)"]


def test_syntax_errors_name_section_key_and_line(tmp_path):
    got = problems(tmp_path, "[global]\nworkers = 2\nbogus\n" + GOOD_TAIL + "  backend = 127.0.0.1:3\n")
    assert got == ["[global]: line 3: 'bogus' is neither a [section] header nor key = value",
                   "[routes.r] backend: line 11: key given twice in this section"]


def test_range_errors_name_the_allowed_range(tmp_path):
    got = problems(tmp_path, "[global]\nprobe_timeout = 0\nmax_probe_bytes = 5\n" + GOOD_TAIL)
    assert got == ["[global] max_probe_bytes: 5 is too small: allowed from 16 to 1048576",
                   "[global] probe_timeout: 0.0 is too small: allowed from 0.01 to 3600"]
