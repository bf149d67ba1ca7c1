"""Configuration: every bad line is reported with file, section and key; --check exit codes."""

from __future__ import annotations

import pwd
import subprocess
import sys
import textwrap

import pytest

from support.daemon import REPO
from epollmux import config

GOOD = """
[global]
probe_timeout = 1.5
[listen]
  [[public]]
  address = 127.0.0.1:4443, [::1]:4443
[routes]
  [[ssh]]
  probe = ssh
  backend = 127.0.0.1:22
  [[web]]
  probe = tls
  sni = Example.ORG, *.example.org
  backend = [::1]:8443
  [[sock]]
  probe = any
  backend = unix:/run/backend.sock
"""


def load(tmp_path, text):
    path = tmp_path / "c.conf"
    path.write_text(textwrap.dedent(text))
    return config.load_file(str(path)), str(path)


def problems(tmp_path, text) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_good_config_typed(tmp_path):
    cfg, _ = load(tmp_path, GOOD)
    assert cfg.settings.probe_timeout == 1.5
    assert cfg.settings.relay == "adaptive"      # the default
    (lst,) = cfg.listeners
    assert [str(a) for a in lst.addresses] == ["127.0.0.1:4443", "[::1]:4443"]
    assert [r.name for r in lst.routes] == ["ssh", "web", "sock"]      # file order by default
    assert cfg.routes["web"].opts["sni"] == ["example.org", "*.example.org"]
    assert cfg.routes["sock"].backend.sockaddr == "/run/backend.sock"


def test_listener_route_order_is_explicit(tmp_path):
    cfg, _ = load(tmp_path, GOOD.replace("address = 127.0.0.1:4443, [::1]:4443",
                                         "address = 127.0.0.1:4443\n  routes = web, ssh"))
    assert [r.name for r in cfg.listeners[0].routes] == ["web", "ssh"]


@pytest.mark.parametrize("change, expected", [
    (("probe_timeout = 1.5", "probe_timeout = fast"), "[global] probe_timeout: the value \"fast\" is of the wrong type."),
    (("probe_timeout = 1.5", "probe_timeout = 1.5\nspeed = 9"), "[global] speed: unknown key"),
    (("probe_timeout = 1.5", "relay = teleport"), "[global] relay: the value \"teleport\" is unacceptable."),
    (("probe_timeout = 1.5", "workers = many"), "[global] workers: 'many' is not 'auto' or a number"),
    (("probe_timeout = 1.5", "on_timeout = nothere"), "[global] on_timeout: no route named 'nothere'"),
    (("probe = ssh", "probe = telepathy"), "[routes.ssh] probe: unknown probe 'telepathy'"),
    (("backend = 127.0.0.1:22", "backend = 127.0.0.1:99999"), "[routes.ssh] backend: '127.0.0.1:99999': port must be"),
    (("backend = 127.0.0.1:22", "backend = ::1:22"), "[routes.ssh] backend: '::1:22': write IPv6 addresses in brackets"),
    (("backend = 127.0.0.1:22", "backend = unix:relative"), "[routes.ssh] backend: 'unix:relative': unix socket path must be absolute"),
    (("backend = 127.0.0.1:22", "backend = 127.0.0.1:22\n  sni = x"), "[routes.ssh] sni: does not apply to probe 'ssh'"),
    (("backend = 127.0.0.1:22", "backend = 127.0.0.1:22\n  colour = red"), "[routes.ssh] colour: unknown key"),
    (("  backend = 127.0.0.1:22\n", "\n"), "[routes.ssh] backend: is required"),
    (("address = 127.0.0.1:4443, [::1]:4443", "address = 127.0.0.1:4443\n  routes = ssh, nope"),
     "[listen.public] routes: no route named 'nope'"),
    (("address = 127.0.0.1:4443, [::1]:4443", "address = [::1:4443"), "[listen.public] address: '[::1:4443': expected [v6-address]:port"),
])
def test_each_problem_names_section_and_key(tmp_path, change, expected):
    old, new = change
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    found = problems(tmp_path, text)
    path = str(tmp_path / "c.conf")
    assert any(p.startswith(f"{path}: {expected}") for p in found), found


def test_all_problems_reported_at_once(tmp_path):
    text = GOOD.replace("probe_timeout = 1.5", "probe_timeout = x\nfoo = 1").replace("probe = ssh", "probe = nope")
    found = problems(tmp_path, text)
    # type errors and unknown keys are found together; probe problems come once those are fixed
    assert len(found) >= 2, found


def test_missing_sections(tmp_path):
    found = problems(tmp_path, "[global]\n")
    assert any(p.endswith("[routes]: define at least one route") for p in found), found


def test_syntax_error_has_line_number(tmp_path):
    found = problems(tmp_path, "[global\nx = 1\n")
    assert "line 1" in found[0], found


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "epollmux", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=30)


def test_check_ok_and_bad_exit_codes(tmp_path):
    good = tmp_path / "good.conf"
    good.write_text(textwrap.dedent(GOOD))
    r = run_cli("-c", str(good), "--check")
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text(textwrap.dedent(GOOD).replace("probe = ssh", "probe = nope").replace("1.5", "x"))
    r = run_cli("-c", str(bad), "--check")
    assert r.returncode == 1
    assert f"{bad}: [global] probe_timeout:" in r.stderr


def test_example_config_is_valid(tmp_path):
    example = REPO / "etc" / "epollmux.conf"
    try:
        pwd.getpwnam("epollmux")        # the package and `make install` create it; --check looks it up
    except KeyError:
        text = example.read_text()
        assert "\nuser = epollmux " in text
        example = tmp_path / "example.conf"
        example.write_text(text.replace("\nuser = epollmux ", "\nuser = nobody "))
    r = run_cli("-c", str(example), "--check")
    assert r.returncode == 0, r.stderr


def test_version():
    from epollmux import __version__
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"epollmux {__version__}"


def test_bad_arguments_exit_1():
    assert run_cli("--no-such-flag").returncode == 1
    r = run_cli("--ssh", "127.0.0.1:22")
    assert r.returncode == 1 and "need --listen" in r.stderr


def test_cannot_bind_exits_2(tmp_path):
    import socket
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        r = run_cli("--listen", f"127.0.0.1:{port}", "--anyprot", "127.0.0.1:9")
    finally:
        holder.close()
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr


def test_flags_become_routes_in_order():
    from epollmux.cli import config_from_flags, parser
    args = parser().parse_args(["--listen", "127.0.0.1:1", "--tls", "127.0.0.1:2", "--ssh", "127.0.0.1:3",
                                "--anyprot", "127.0.0.1:4", "--probe-timeout", "0.5"])
    cfg = config_from_flags(args)
    assert [(r.name, r.probe) for r in cfg.listeners[0].routes] == [("tls", "tls"), ("ssh", "ssh"), ("anyprot", "any")]
    assert cfg.settings.on_timeout == "ssh" and cfg.settings.probe_timeout == 0.5


def test_routes_after_any_are_refused(tmp_path):
    text = GOOD.replace("[[ssh]]", "[[first]]\n  probe = any\n  backend = 127.0.0.1:1\n  [[ssh]]")
    found = problems(tmp_path, text)
    assert any("[listen.public] routes: route 'first' (probe any) takes every client, so ssh, web, sock "
               "can never be chosen" in p for p in found), found


def test_on_timeout_can_name_the_anyprot_route():
    from epollmux.cli import config_from_flags, parser
    args = parser().parse_args(["--listen", "127.0.0.1:1", "--http", "127.0.0.1:2", "--anyprot", "127.0.0.1:4",
                                "--on-timeout", "anyprot"])
    cfg = config_from_flags(args)
    assert cfg.listeners[0].on_timeout.name == "anyprot"


def test_check_warns_when_transparent_lacks_capabilities(tmp_path):
    path = tmp_path / "t.conf"
    path.write_text(textwrap.dedent(GOOD).replace("probe = ssh", "probe = ssh\n  transparent = yes"))
    r = subprocess.run(["setpriv", "--bounding-set", "-net_admin,-net_raw", sys.executable, "-m", "epollmux",
                        "-c", str(path), "--check"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "warning: [routes] transparent: ssh need CAP_NET_ADMIN or CAP_NET_RAW" in r.stderr
    r = run_cli("-c", str(path), "--check")          # root has them: no warning
    assert r.returncode == 0 and "warning" not in r.stderr


@pytest.mark.parametrize("change, expected", [
    (("probe_timeout = 1.5", "probe_timeout = 1.5\nprobe_timout = 3"),
     "[global] probe_timout: unknown key; did you mean probe_timeout?"),
    (("backend = 127.0.0.1:22", "backend = 127.0.0.1:22\n  max_conections = 3"),
     "[routes.ssh] max_conections: unknown key; did you mean max_connections?"),
    (("backend = 127.0.0.1:22", "backend = 127.0.0.1:22\n  conect_timeout = 3"),
     "[routes.ssh] conect_timeout: unknown key; did you mean connect_timeout? (a [global] key)"),
])
def test_a_misspelt_key_is_reported_once_with_the_key_meant(tmp_path, change, expected):
    """A typo gets one line naming the key it is close to (and where that key lives), not a second
    line saying the unknown key "does not apply to probe ..."."""
    text = GOOD.replace(*change, 1)
    found = problems(tmp_path, text)
    key = expected.split("]")[1].split(":")[0].strip()
    mine = [p for p in found if f"] {key}:" in p]
    assert mine == [f"{tmp_path / 'c.conf'}: {expected}"], found
