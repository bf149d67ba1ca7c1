"""The stress suite (`make stress`), UDP: a bounded churn of many short flows through an `openvpn` route to a
UDP echo backend, two workers, with a garbage flood interleaved.  Fails on a datagram that comes back
changed or to another flow's client, a flow that never completes, a garbage datagram that is neither
counted by the daemon nor dropped by the kernel, a traceback, a worker death, or worker fds and RSS that are
not back to their level once the flows went idle (`udp_idle_timeout`).  Two rounds (the second must not
grow the RSS the first left); EPOLLMUX_STRESS_SCALE (default 1) multiplies the flow and garbage counts.
"""

from __future__ import annotations

import os
import random
import selectors
import socket
import time
import urllib.request

import pytest

from stress.harness import Clock, fd_count, healthy, n, one_line
from support.daemon import make_config, metrics_section, proc_rss_kib
from support.net import free_port, wait_until
from support.udp import UdpEcho, free_udp_port

pytestmark = pytest.mark.timeout(900)

FLOWS = 10000           # per round
ROUNDS = 2
GARBAGE_PER_FLOW = 3    # garbage datagrams sent each time a flow completes
IN_FLIGHT = 200         # flows open at once
DATA_DATAGRAMS = 2      # after the OpenVPN reset
IDLE = 1.0              # the route's udp_idle_timeout
RESEND_AFTER = 0.5      # a datagram lost (a full buffer) is sent again after this long without its echo
ROUND_DEADLINE = 300.0
CLIENT_HOSTS = [f"127.0.0.{i}" for i in range(2, 10)]    # spread over 8 addresses: fewer reused ports
GARBAGE_HOST = "127.0.0.10"
GARBAGE_PORTS = 300


def reset(flow: int) -> bytes:
    """An OpenVPN P_CONTROL_HARD_RESET_CLIENT_V2 (no tls-auth) whose 8-byte session id is the flow's number."""
    return bytes([0x38]) + flow.to_bytes(8, "big") + b"\x00" + bytes(4)


def data(flow: int, step: int, rng: random.Random) -> bytes:
    return b"F%d.%d:" % (flow, step) + rng.randbytes(rng.randrange(0, 1400))


def junk(rng: random.Random) -> bytes:
    """No route here takes it: empty, or a first byte that is no OpenVPN client reset."""
    if rng.randrange(8) == 0:
        return b""
    first = rng.choice([b for b in range(256) if b >> 3 not in (7, 10)])
    return bytes([first]) + rng.randbytes(rng.randrange(0, 600))


def metric_sum(mport: int, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def listener_kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped on the unconnected sockets bound to 127.0.0.1:port (full receive buffer)."""
    local = f"0100007F:{port:04X}"
    total = 0
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[1] == local and cols[2] == "00000000:0000":
                total += int(cols[-1])
    return total


def accounts(mport: int, port: int) -> dict:
    return {"dropped": metric_sum(mport, "epollmux_udp_dropped_total", route="-"),
            "no_route": metric_sum(mport, "epollmux_connections_closed_total", route="-", reason="no-route"),
            "stray": metric_sum(mport, "epollmux_events_total", event="udp_stray"),
            "kernel": listener_kernel_drops(port)}


def delta(now: dict, before: dict) -> dict:
    return {k: now[k] - before[k] for k in now}


class Flow:
    __slots__ = ("number", "sock", "steps", "step", "sent_at", "resent")

    def __init__(self, number: int, port: int, rng: random.Random):
        self.number = number
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((CLIENT_HOSTS[number % len(CLIENT_HOSTS)], 0))
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.steps = [reset(number)] + [data(number, i, rng) for i in range(DATA_DATAGRAMS)]
        self.step = 0
        self.resent = 0
        self.send()

    def send(self) -> None:
        self.sent_at = time.monotonic()
        try:
            self.sock.send(self.steps[self.step])
        except BlockingIOError:
            pass            # sent again after RESEND_AFTER


def churn(port: int, mport: int, first: int, count: int, rng: random.Random) -> dict:
    """Run `count` flows, IN_FLIGHT at a time, with GARBAGE_PER_FLOW garbage datagrams after each; every echo
    is checked against what that flow sent. Returns the round's figures."""
    garbage = []
    for _ in range(GARBAGE_PORTS):
        g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        g.bind((GARBAGE_HOST, 0))
        g.connect(("127.0.0.1", port))
        g.setblocking(False)
        garbage.append(g)
    before = accounts(mport, port)
    sel = selectors.DefaultSelector()
    pending, started, done, resent, junk_sent, foreign, quarantine = {}, 0, 0, 0, 0, 0, []
    clock = Clock()
    try:
        while done < count:
            assert clock() < ROUND_DEADLINE, f"round stuck: {done}/{count} flows done, {len(pending)} open"
            while started < count and len(pending) < IN_FLIGHT:
                flow = Flow(first + started, port, rng)
                started += 1
                pending[flow.sock.fileno()] = flow
                sel.register(flow.sock, selectors.EVENT_READ, flow)
            for key, _ in sel.select(timeout=0.2):
                flow = key.data
                while True:
                    try:
                        got = flow.sock.recv(65535)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        continue
                    if got == flow.steps[flow.step]:
                        flow.step += 1
                        if flow.step == len(flow.steps):
                            break
                        flow.send()
                    elif not any(got == s for s in flow.steps[:flow.step]):
                        foreign += 1        # a datagram this flow never sent: misdirected or changed
                if flow.step == len(flow.steps):
                    sel.unregister(flow.sock)
                    del pending[flow.sock.fileno()]
                    # A flow that resent may still get a late duplicate echo: keep its port until the end,
                    # so that no later flow reuses it and takes that duplicate for a foreign datagram.
                    (quarantine.append(flow.sock) if flow.resent else flow.sock.close())
                    done += 1
                    for _ in range(GARBAGE_PER_FLOW):
                        try:
                            garbage[junk_sent % GARBAGE_PORTS].send(junk(rng))
                            junk_sent += 1
                        except BlockingIOError:
                            pass
            now = time.monotonic()
            for flow in pending.values():
                if now - flow.sent_at > RESEND_AFTER:
                    flow.resent += 1
                    resent += 1
                    flow.send()
        seconds = clock()
        # Every garbage datagram is counted by the daemon, as no-route or (two workers) as a stray read by a flow
        # socket in the instant before its connect, or dropped by the kernel on a full listening socket; the
        # last two may also have taken some flows' first datagrams, which those flows resent.
        def accounted() -> float:
            got = delta(accounts(mport, port), before)
            return got["no_route"] + got["stray"] + got["kernel"]
        wait_until(lambda: accounted() >= junk_sent, timeout=60, interval=0.2,
                   what=f"{junk_sent} garbage datagrams accounted for ({delta(accounts(mport, port), before)})")
        got = delta(accounts(mport, port), before)
        assert accounted() <= junk_sent + resent, (got, junk_sent, resent)
        # and the daemon's dropped count is exact: no-route and strays, nothing else
        assert got["dropped"] == got["no_route"] + got["stray"], got
    finally:
        sel.close()
        for flow in pending.values():
            flow.sock.close()
        for s in garbage + quarantine:
            s.close()
    assert foreign == 0, f"{foreign} datagrams came back to a flow that never sent them"
    return {"flows": count, "seconds": seconds, "flows_per_s": count / seconds, "resent": resent,
            "garbage": junk_sent, "no_route": int(got["no_route"]), "strays": int(got["stray"]),
            "kernel_dropped": got["kernel"]}


def test_udp_flow_churn_with_a_garbage_flood(daemon):
    echo = UdpEcho()
    try:
        port, mport = free_udp_port(), free_port()
        cfg = make_config({"u": f"udp:127.0.0.1:{port}"},
                          {"vpn": {"probe": "openvpn", "backend": echo.address, "udp_idle_timeout": IDLE}},
                          workers=2, max_flows=100000, max_flows_per_source=0, sections=metrics_section(mport))
        d = daemon().start(cfg, ready=True)
        workers = d.wait_workers(2)
        rng = random.Random(int.from_bytes(os.urandom(4), "big"))

        def idle() -> bool:
            return metric_sum(mport, "epollmux_udp_flows_active") == 0

        churn(port, mport, 0, n(1000), rng)                 # warm-up: allocator arenas, dict sizes
        wait_until(idle, timeout=60, interval=0.2, what="warm-up flows expired")
        fds0 = {pid: fd_count(pid) for pid in workers}
        rss = [sum(proc_rss_kib(p) for p in workers)]
        figures = []
        first = n(1000)
        for _ in range(ROUNDS):
            figures.append(churn(port, mport, first, n(FLOWS), rng))
            first += n(FLOWS)
            peak_fds = sum(fd_count(p) for p in workers)         # before the flows expire
            wait_until(idle, timeout=60, interval=0.2, what="flows expired after udp_idle_timeout")
            health = healthy(d, workers, fds0)
            rss.append(sum(proc_rss_kib(p) for p in workers))
            figures[-1].update(fds_at_round_end=peak_fds, rss_kib=rss[-1])
        routed = metric_sum(mport, "epollmux_connections_routed_total", route="vpn")
        idle_closed = metric_sum(mport, "epollmux_connections_closed_total", route="vpn", reason="udp-idle")
        assert idle_closed == routed, (idle_closed, routed)        # every flow ended by expiry, none otherwise
        for i, f in enumerate(figures):
            one_line(f"udp-churn-round{i + 1}", **f)
        one_line("udp-churn", rounds=ROUNDS, flows_routed=int(routed), fds_before=sum(fds0.values()),
                 fds_after=sum(fd_count(p) for p in workers), rss_kib_before=rss[0], rss_kib_after=rss[-1],
                 health=health.replace(" ", ","))
        assert rss[-1] - rss[0] < 16 * 1024, rss
        assert rss[-1] - rss[1] < 4 * 1024, rss              # the second round reuses what the first grew
    finally:
        echo.close()
