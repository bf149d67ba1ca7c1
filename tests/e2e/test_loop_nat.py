"""A loop that --check cannot see: the route's backend is another host's address, and a DNAT rule (nftables)
sends it back to the daemon's own listener. Caught at run time: the looping connection arrives from one of
the worker's backend sockets, at an address other than the one that socket connected to, and the address
it was sent to (SO_ORIGINAL_DST) is that socket's target. In a network namespace made here and deleted at
the end; the daemon runs in it by `ip netns exec` (which execs: the PID is the daemon's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from support.daemon import REPO, make_config
from test_transparent_netns import InNs, ip, run_client

ADDR, ELSEWHERE, PORT = "10.78.0.2", "10.78.0.1", 4443

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def nat_ns():
    if os.geteuid() != 0:
        pytest.fail("the namespace tests need root (CI runs as root)")
    if not shutil.which("nft"):
        pytest.fail("nft is missing: `make test` installs nftables")
    name = f"emx-nat{os.getpid() % 100000}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", name, "addr", "add", f"{ADDR}/24", "dev", "v0")
        for dev in ("v0", "v1"):
            ip("-n", name, "link", "set", dev, "up")
        rules = ("table ip emx {\n chain out {\n  type nat hook output priority -100;\n"
                 f"  ip daddr {ELSEWHERE} tcp dport 9 dnat to {ADDR}:{PORT}\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=rules, text=True, check=True,
                       capture_output=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def test_a_nat_rule_sending_the_backend_back_is_caught_at_run_time(nat_ns, tmp_path):
    cfg = tmp_path / "nat.conf"
    # max_connections bounds the loop if it were not caught (else it runs until the fds run out)
    cfg.write_text(make_config(f"{ADDR}:{PORT}", f"{ELSEWHERE}:9", workers=1, max_connections=40))
    check = subprocess.run([sys.executable, "-m", "epollmux", "-c", str(cfg), "--check"], cwd=REPO,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr        # nothing --check can see
    env_python = ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "epollmux", "-c", str(cfg)]
    d = InNs(nat_ns, env_python, tmp_path / "daemon.log")
    try:
        d.wait_text("ready: 1 worker accepting", timeout=20)
        got = run_client(nat_ns, ADDR, PORT, "hello")
        text = d.wait_text("reason=loop", timeout=20)
        lines = [line for line in text.splitlines() if " reason=" in line]
        d.wait_text("a route's backend leads back to a listener of this daemon")
    finally:
        d.stop()
    assert got["got"] == ["-"]
    assert len(lines) <= 3, f"one client became {len(lines)} connections:\n" + "\n".join(lines[:10])
