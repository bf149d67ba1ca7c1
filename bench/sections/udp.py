"""UDP: datagrams/s and Gbit/s through a subject for one flow and for many flows, loss, memory per held flow.

Owns: the udp section. Subjects: direct (no relay), epollmux (`udp:` listener, `probe = any`, 1 worker) and
socat (`UDP4-LISTEN ... fork`: a process per flow). One flow: iperf3 `-u` at fixed rates (`--udp-rates`,
1200-byte datagrams) against one iperf3 server; its TCP control connection goes through the subject too
(epollmux: a TCP listener on the same port number; socat: a second socat), so only the data flow is UDP;
loss is iperf3's count at the receiver. Many flows: `bench.peers.udpload flows` opens `--udp-flows` flows
(1,000) and sends a fixed total rate of 1200-byte datagrams round-robin over them to an echo backend, for
`--udp-seconds`; loss = 1 - echoes received / datagrams sent (both directions through the subject). The
subject's CPU seconds over each run give datagrams per CPU-second. Held flows: `udpload hold` proves N flows
with one round trip each and keeps them; memory per flow = (RSS with all held - RSS after a 16-flow warm-up)
/ N (epollmux only: socat's cost is a process per flow). Subjects are measured in turn, A/B interleaved
per rate, on a machine whose CPUs the load generator and the backend share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.harness.procs import HOST, CpuGroup, Proc, memory_kb
from bench.peers import loadgen, subjects

REPO = subjects.REPO
SUBJECTS = ["direct", "epollmux", "socat"]
SIZE = 1200


def udp_bound(port: int) -> bool:
    try:
        with open("/proc/net/udp") as f:
            return any(int(line.split()[1].split(":")[1], 16) == port for line in list(f)[1:])
    except (OSError, ValueError, IndexError):
        return False


def wait_bound(proc: Proc, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if udp_bound(port):
            return
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited: {proc.tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: udp port {port} not bound")


class Relay:
    """One UDP subject on `port` in front of udp backend `to` (and TCP `tcp_to`, for iperf3's control)."""

    def __init__(self, name: str, tmpdir: str, port: int, to: int, tcp_to: int | None):
        self.name, self.tmpdir, self.port, self.to, self.tcp_to = name, tmpdir, port, to, tcp_to
        self.procs: list[Proc] = []

    def start(self) -> "Relay":
        ident = f"udp-{self.name}.{self.port}"
        if self.name == "direct":
            self.port = self.to
            return self
        if self.name == "epollmux":
            conf = os.path.join(self.tmpdir, f"{ident}.conf")
            tcp = (f"  [[t]]\n  address = {HOST}:{self.port}\n  routes = t\n" if self.tcp_to else "")
            tcp_route = (f"  [[t]]\n  probe = any\n  backend = {HOST}:{self.tcp_to}\n" if self.tcp_to else "")
            with open(conf, "w") as f:
                f.write(f"[global]\nworkers = 1\nlog_level = warning\nmax_flows = 100000\nmax_flows_per_source = 0\n"
                        f"[listen]\n  [[u]]\n  address = udp:{HOST}:{self.port}\n  routes = u\n{tcp}"
                        f"[routes]\n  [[u]]\n  probe = any\n  backend = udp:{HOST}:{self.to}\n{tcp_route}")
            env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
            self.procs.append(Proc(ident, [sys.executable, "-m", "epollmux", "-c", conf], self.tmpdir, cwd=REPO,
                                   env=env, cgroup=CpuGroup.make(ident)))
        else:
            self.procs.append(Proc(ident, ["socat", f"UDP4-LISTEN:{self.port},bind={HOST},reuseaddr,fork",
                                           f"UDP4:{HOST}:{self.to}"], self.tmpdir, cgroup=CpuGroup.make(ident)))
            if self.tcp_to:
                self.procs.append(Proc(ident + "-tcp", ["socat", f"TCP-LISTEN:{self.port},bind={HOST},reuseaddr,fork",
                                                        f"TCP:{HOST}:{self.tcp_to}"], self.tmpdir))
        wait_bound(self.procs[0], self.port)
        if self.tcp_to:
            self.procs[-1].wait_listening(self.port)
        return self

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.procs)

    def rss_kb(self) -> int:
        return sum(memory_kb(p.pid)["rss_kb"] for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


def many_flows(port: int, flows: int, rate: float, seconds: float) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.peers.udpload", "flows", HOST, str(port), str(flows),
                          str(rate), str(SIZE), str(seconds)], capture_output=True, text=True, cwd=REPO,
                         timeout=seconds + 60)
    try:
        doc = json.loads(out.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": (out.stderr or out.stdout).strip()[-300:]}
    doc["loss"] = 1 - doc["received"] / doc["sent"] if doc["sent"] else None
    doc["dgrams_per_s"] = doc["received"] / seconds
    return doc


def held_memory(port: int, relay: Relay, n: int) -> dict:
    warm = subprocess.Popen([sys.executable, "-m", "bench.peers.udpload", "hold", HOST, str(port), "16"],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        warm.stdout.readline()
        base = relay.rss_kb()
        held = subprocess.Popen([sys.executable, "-m", "bench.peers.udpload", "hold", HOST, str(port), str(n)],
                                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = held.stdout.readline().split()
            got = int(line[1]) if len(line) == 2 else 0
            full = relay.rss_kb()
        finally:
            held.stdin.close()
            held.wait(30)
    finally:
        warm.stdin.close()
        warm.wait(30)
    return {"held": got, "rss_base_kb": base, "rss_held_kb": full,
            "kb_per_flow": (full - base) / got if got else None}


def run_section(ctx) -> dict:
    o = ctx.opts
    rates = o.udp_rates.split(",")
    flow_rates = [float(r) for r in o.udp_flow_rates.split(",")]
    seconds = o.udp_seconds
    sec = {"section": "udp", "params": {"rates": rates, "flow_rates": flow_rates, "flows": o.udp_flows,
                                        "seconds": seconds, "size": SIZE, "held_n": o.udp_held,
                                        "repeat": o.repeat}, "one_flow": [], "many_flows": [], "held": {}}
    iperf = Proc("udp-iperf3-server", ["iperf3", "-s", "-B", HOST, "-p", str(ctx.ports.take())], ctx.tmpdir)
    iperf_port = int(iperf.argv[-1])
    echo_port = ctx.ports.take()
    echo = Proc("udp-echo", [sys.executable, "-m", "bench.peers.udpload", "echo", str(echo_port)], ctx.tmpdir,
                cwd=REPO)
    try:
        iperf.wait_listening(iperf_port)
        wait_bound(echo, echo_port)
        for rnd in range(o.repeat):
            order = SUBJECTS[rnd % len(SUBJECTS):] + SUBJECTS[:rnd % len(SUBJECTS)]
            for rate in rates:
                for name in order:
                    if not ctx.has_time(seconds + 30):
                        return sec
                    relay = Relay(name, ctx.tmpdir, ctx.ports.take(), iperf_port, iperf_port).start()
                    try:
                        c0 = relay.cpu()
                        res = loadgen.iperf3_udp(relay.port, rate, SIZE, seconds)
                        res["cpu_s"] = relay.cpu() - c0
                    finally:
                        relay.stop()
                    ctx.log(f"udp one flow {name} {rate}: {res}")
                    sec["one_flow"].append({"subject": name, "rate": rate, "round": rnd, **res})
            for rate in flow_rates:
                for name in order:
                    if not ctx.has_time(seconds + 40):
                        return sec
                    relay = Relay(name, ctx.tmpdir, ctx.ports.take(), echo_port, None).start()
                    try:
                        c0 = relay.cpu()
                        res = many_flows(relay.port, o.udp_flows, rate, seconds)
                        res["cpu_s"] = relay.cpu() - c0
                    finally:
                        relay.stop()
                    ctx.log(f"udp {o.udp_flows} flows {name} {rate:.0f}/s: {res}")
                    sec["many_flows"].append({"subject": name, "rate": rate, "round": rnd, **res})
        if ctx.has_time(60):
            relay = Relay("epollmux", ctx.tmpdir, ctx.ports.take(), echo_port, None).start()
            try:
                sec["held"] = {"epollmux": held_memory(relay.port, relay, o.udp_held)}
            finally:
                relay.stop()
            ctx.log(f"udp held flows: {sec['held']}")
    finally:
        echo.stop()
        iperf.stop()
    return sec


def md(sec: dict) -> str:
    p = sec["params"]
    lines = [f"Shared 2-CPU machine: load generator, backend and subject compete for the CPUs, so compare within a "
             f"row of the same rate. {p['size']}-byte datagrams, {p['seconds']} s per run, {p['repeat']} round(s), "
             "subjects interleaved per rate; epollmux runs 1 worker. CPU-s = the subject's processes.", "",
             "**One flow (iperf3 -u)**", "",
             "| subject | offered | Gbit/s received | loss | subject CPU-s | datagrams per subject CPU-s |",
             "|---|---|---|---|---|---|"]
    for r in sec["one_flow"]:
        if "error" in r:
            lines.append(f"| {r['subject']} | {r['rate']} | error: {r['error'][:60]} | | | |")
            continue
        per_cpu = (r["packets"] - r["lost"]) / r["cpu_s"] if r.get("cpu_s") else None
        lines.append(f"| {r['subject']} | {r['rate']} | {r['gbps']:.3f} | {_pct(r['loss'])} | "
                     f"{r['cpu_s']:.2f} | {'-' if per_cpu is None else f'{per_cpu:,.0f}'} |")
    lines += ["", f"**{p['flows']} flows (bench.peers.udpload, echo backend: loss counts both directions)**", "",
              "| subject | flows proven | offered datagrams/s | echoes/s | loss | subject CPU-s | "
              "datagrams (both ways) per CPU-s |",
              "|---|---|---|---|---|---|---|"]
    for r in sec["many_flows"]:
        if "error" in r:
            lines.append(f"| {r['subject']} | | {r['rate']:.0f} | error: {r['error'][:60]} | | | |")
            continue
        per_cpu = 2 * r["received"] / r["cpu_s"] if r.get("cpu_s") else None
        lines.append(f"| {r['subject']} | {r['flows']} | {r['rate']:.0f} | {r['dgrams_per_s']:,.0f} | {_pct(r['loss'])} | "
                     f"{r.get('cpu_s', 0):.2f} | {'-' if per_cpu is None else f'{per_cpu:,.0f}'} |")
    held = sec.get("held", {}).get("epollmux")
    if held:
        lines += ["", f"**Held flows (epollmux)**: {held['held']} flows held, RSS {held['rss_base_kb']} -> "
                      f"{held['rss_held_kb']} kB: {held['kb_per_flow']:.2f} kB per flow (two sockets each; their "
                      "kernel buffers are not in RSS). socat holds a process per flow.",
              "", "socat's `UDP4-LISTEN ... fork` proves only some of the flows (its parent and children share the "
              "listening socket, so later datagrams of a flow can reach a new child) and may echo some twice: its "
              "many-flow rows are not a fair comparison and show why a flow table is needed."]
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"
