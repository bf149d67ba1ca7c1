"""UDP in the configuration: udp: addresses, which routes are UDP routes, the keys they take and refuse,
their defaults, and the cross-key checks (`--check` form "FILE: [section] key: message")."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

from support.daemon import REPO, make_config
from epollmux import checks, config


def load(tmp_path, listeners, routes, **glob):
    path = tmp_path / "c.conf"
    path.write_text(make_config(listeners, routes, **glob))
    return config.load_file(str(path))


def problems(tmp_path, listeners, routes, **glob) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, listeners, routes, **glob)
    return [p.split(": ", 1)[1] for p in info.value.problems]


H3 = {"probe": "quic", "sni": "a.example", "backend": "127.0.0.1:8443"}
VPN = {"probe": "openvpn", "backend": "udp:127.0.0.1:1194"}
SSH = {"probe": "ssh", "backend": "127.0.0.1:22"}


def test_tcp_and_udp_listeners_on_one_port_with_their_own_routes(tmp_path):
    cfg = load(tmp_path, {"t": "127.0.0.1:4443", "u": "udp:127.0.0.1:4443"}, {"ssh": SSH, "h3": H3, "vpn": VPN})
    by_name = {lst.name: lst for lst in cfg.listeners}
    assert not by_name["t"].udp and [r.name for r in by_name["t"].routes] == ["ssh"]
    assert by_name["u"].udp and [r.name for r in by_name["u"].routes] == ["h3", "vpn"]
    h3, vpn = cfg.routes["h3"], cfg.routes["vpn"]
    assert h3.udp and h3.backend.udp and h3.backend.sockaddr == ("127.0.0.1", 8443)    # udp: prefix optional
    assert h3.udp_idle_timeout == 30.0 and vpn.udp_idle_timeout == 60.0                  # quic 30 s, others 60 s
    assert list(h3.opts["sni"]) == ["a.example"]
    assert cfg.settings.max_flows == 16384 and cfg.settings.max_flows_per_source == 512
    assert not checks.run(cfg, local=set()).errors          # TCP 4443 and UDP 4443 do not overlap


def test_ambiguous_probe_is_udp_when_a_udp_listener_names_it(tmp_path):
    cfg = load(tmp_path, {"u": {"address": "udp:127.0.0.1:4443", "routes": "ovpn"}, "t": "127.0.0.1:4443"},
               {"ovpn": {"probe": "openvpn", "backend": "127.0.0.1:1194", "udp_idle_timeout": 5}, "ssh": SSH})
    assert cfg.routes["ovpn"].udp and cfg.routes["ovpn"].udp_idle_timeout == 5.0
    assert not cfg.routes["ssh"].udp


@pytest.mark.parametrize("listeners, routes, expected", [
    ({"m": {"address": "127.0.0.1:4443, udp:127.0.0.1:4443"}}, {"ssh": SSH},
     "[listen.m] address: mixes TCP and udp: addresses; a listener is all TCP or all UDP (write two listener "
     "sections to serve both on one port)"),
    ({"u": {"address": "udp:127.0.0.1:4443", "routes": "ssh"}}, {"ssh": SSH},
     "[routes.ssh] probe: 'ssh' is a TCP probe, and this is a UDP route (a UDP listener names it): UDP routes "
     "take any, dtls, openvpn, quic, regex, teamspeak, wireguard"),
    ({"t": {"address": "127.0.0.1:4443", "routes": "h3"}}, {"h3": H3},
     "[listen.t] routes: route 'h3' is a UDP route (probe quic, backend udp:127.0.0.1:8443) and this listener is "
     "TCP: a UDP route needs a listener of udp: addresses"),
    ({"u": "udp:127.0.0.1:4443"}, {"h3": {**H3, "tls_cert": "/x.pem", "tls_key": "/x.key"}},
     "[routes.h3] tls_cert: does not apply to a UDP route (probe 'quic')"),
    ({"u": "udp:127.0.0.1:4443"}, {"v": {**VPN, "send_proxy": "v2"}},
     "[routes.v] send_proxy: does not apply to a UDP route (probe 'openvpn')"),
    ({"u": "udp:127.0.0.1:4443"}, {"v": {**VPN, "backend": "udp:unix:/run/x"}},
     "[routes.v] backend: 'udp:unix:/run/x': a UDP address is host:port or [v6]:port"),
    ({"t": "127.0.0.1:4443"}, {"ssh": {**SSH, "udp_idle_timeout": 3}},
     "[routes.ssh] udp_idle_timeout: applies to UDP routes only"),
    ({"u": {"address": "udp:127.0.0.1:4443", "proxy_protocol": "v2", "trusted": "10.0.0.0/8"}}, {"v": VPN},
     "[listen.u] proxy_protocol: a UDP listener takes no PROXY header (TCP only)"),
])
def test_udp_problems_name_section_and_key(tmp_path, listeners, routes, expected):
    assert expected in problems(tmp_path, listeners, routes)


def test_two_udp_listeners_on_one_address_and_a_udp_route_to_itself(tmp_path):
    cfg = load(tmp_path, {"u": "udp:127.0.0.1:4443", "w": "udp:127.0.0.1:4443"},
               {"v": {**VPN, "backend": "udp:127.0.0.1:4443"}})
    errors = checks.run(cfg, local=set()).errors
    assert any("[listen.w] address: 'udp:127.0.0.1:4443' is also an address of [listen.u]" in e for e in errors)
    assert any("[routes.v] backend: 'udp:127.0.0.1:4443' is the daemon's own listener" in e for e in errors)


def test_check_cli_prints_udp_problem_in_file_form(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text(make_config({"m": {"address": "127.0.0.1:4443, udp:127.0.0.1:4443"}}, {"ssh": SSH}))
    out = subprocess.run([sys.executable, "-m", "epollmux", "-c", str(path), "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"{path}: [listen.m] address: mixes TCP and udp: addresses" in out.stdout + out.stderr
