"""The kernel relay's contract under randomized load (`make stress`): one daemon with `relay = sockmap` and
three listeners (IPv4, IPv6, and IPv4 taking a PROXY v1 header, which must stay on splice), a backend that
streams its own bytes while it reads, and RUNS randomized connections, a few at a time. Each run draws its
sizes, its write chunking, who half-closes first, whether the client reads slowly, or whether it resets.

Checked for every run: the bytes each side received are exactly the bytes the other sent (the offset and
length of any lost or duplicated range are reported), and for every connection that ended in EOF the access
log's up= and down= equal what was sent. The figures (runs, GiB, kernel pairs, TCP retransmits and drops
from nstat) go to one STRESS line. EPOLLMUX_STRESS_SCALE multiplies the runs.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import struct
import subprocess
import threading
import time

import pytest

from stress.harness import run_clients
from support.daemon import kernel_stats, make_config
from support.net import free_port, wait_until
from epollmux.relay import sockmap

MiB = 1 << 20
RUNS = 240 * int(os.environ.get("EPOLLMUX_STRESS_SCALE") or 1)
SPEC = struct.Struct("<BQQ")          # order (0: client closes first, 1: backend first), down size, seed
CHUNKS = (1, 7, 100, 1460, 16384, 65483, 65536, 300_000, MiB)
NSTAT = ("TcpRetransSegs", "TcpExtTCPRcvQDrop", "TcpExtTCPBacklogDrop", "TcpExtTCPZeroWindowDrop",
         "TcpExtTCPOFOQueue", "TcpExtTCPLossProbes")


def stream(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def send_chunked(sock: socket.socket, data: bytes, rng: random.Random) -> None:
    view, i = memoryview(data), 0
    while i < len(data):
        n = rng.choice(CHUNKS)
        sock.sendall(view[i:i + n])
        i += n


def recv_to_end(sock: socket.socket, slow: bool = False) -> tuple[bytes, str]:
    out = bytearray()
    try:
        while data := sock.recv(1 << 16 if slow else MiB):
            out += data
            if slow:
                time.sleep(0.0005)
    except ConnectionResetError:
        return bytes(out), "reset"
    return bytes(out), "eof"


def where(got: bytes, want: bytes) -> str:
    """Where two byte strings first differ, and by how much their lengths do: for lost or duplicated ranges."""
    n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return f"first difference at offset {n}, got {len(got)} bytes for {len(want)} ({len(got) - len(want):+d})"


class Backend:
    """Reads a SPEC, then at once streams `down` bytes of its seed's stream while reading everything the
    client sends; order 1 half-closes before the client does, order 0 only after the client's EOF.
    Records (sha256 of what it read, length) by seed."""

    def __init__(self):
        self.seen: dict[int, tuple[str, int]] = {}
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(120)
        try:
            head = b""
            while len(head) < SPEC.size:
                data = conn.recv(SPEC.size - len(head))
                if not data:
                    return
                head += data
            order, down, seed = SPEC.unpack(head)
            digest, count, done = hashlib.sha256(head), [SPEC.size], threading.Event()

            def reader():
                try:
                    while data := conn.recv(MiB):
                        digest.update(data)
                        count[0] += len(data)
                except OSError:
                    count[0] = -1
                done.set()

            threading.Thread(target=reader, daemon=True).start()
            rng = random.Random(seed + 1)
            data = stream(seed + 2, down)
            cut = len(data) if order == 1 else len(data) // 2
            send_chunked(conn, data[:cut], rng)
            if order == 0:
                done.wait(120)                 # the client's EOF first
                send_chunked(conn, data[cut:], rng)
            conn.shutdown(socket.SHUT_WR)
            done.wait(120)
            with self.lock:
                self.seen[seed] = (digest.hexdigest(), count[0])
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def nstat() -> dict[str, int]:
    try:
        out = subprocess.run(["nstat", "-az", *NSTAT], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {f[0]: int(f[1]) for f in (line.split() for line in out.splitlines()) if len(f) >= 2 and f[1].isdigit()}


@pytest.mark.timeout(1800)
def test_kernel_relay_contract_randomized(daemon):
    try:
        sockmap.Sockmap.load(max_entries=2).close()
    except sockmap.SockmapUnavailable as exc:
        pytest.skip(f"sockmap unavailable here: {exc.reason}")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        v6 = True
    except OSError:
        v6 = False
    backend = Backend()
    p4, p6, pp = free_port(), free_port("::1") if v6 else 0, free_port()
    listeners = {"v4": f"127.0.0.1:{p4}",
                 "pp": {"address": f"127.0.0.1:{pp}", "proxy_protocol": "v1", "trusted": "127.0.0.1"}}
    if v6:
        listeners["v6"] = f"[::1]:{p6}"
    d = daemon().start(make_config(listeners, f"127.0.0.1:{backend.port}", relay="sockmap", workers=1,
                                   idle_timeout=120), wait=p4)
    before = nstat()
    master = random.Random(int(os.environ.get("EPOLLMUX_STRESS_SEED") or time.time_ns()))
    plans = []
    for i in range(RUNS):
        big = master.random() < 0.12
        size = lambda: master.choice((0, 1, 17, 1000, 65483, 65484, 300_000, 2 * MiB + 3)) if not big \
            else master.randint(8 * MiB, 40 * MiB)
        kind = master.choices(("v4", "v6", "pp"), (5, 3 if v6 else 0, 2))[0]
        plans.append({"seed": (i << 32) | master.getrandbits(31), "up": size(), "down": size(),
                      "order": master.randint(0, 1), "slow": master.random() < 0.1, "kind": kind,
                      "reset": master.random() < 0.08})
    failures: list[str] = []
    totals = {"bytes": 0, "eof": 0, "reset": 0}
    ports: dict[int, dict] = {}
    lock = threading.Lock()

    def run(plan: dict) -> None:
        host, port = {"v4": ("127.0.0.1", p4), "v6": ("::1", p6), "pp": ("127.0.0.1", pp)}[plan["kind"]]
        seed, rng = plan["seed"], random.Random(plan["seed"])
        c = socket.create_connection((host, port), timeout=120)
        try:
            head = SPEC.pack(plan["order"], plan["down"], seed)
            up = stream(seed + 3, plan["up"])
            local = c.getsockname()[1]                      # the log names the PROXY source: make it ours
            proxy = f"PROXY TCP4 192.0.2.1 192.0.2.2 {local} 80\r\n".encode() if plan["kind"] == "pp" else b""
            first = proxy + head + up[:rng.choice(CHUNKS)]
            c.sendall(first)                                # PROXY header and first payload in one write
            if plan["reset"]:
                time.sleep(rng.random() * 0.01)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with lock:
                    totals["reset"] += 1
                return
            got: list = []
            reader = threading.Thread(target=lambda: got.append(recv_to_end(c, plan["slow"])), daemon=True)
            reader.start()
            send_chunked(c, up[len(first) - len(head) - len(proxy):], rng)
            if plan["order"] == 1:
                reader.join(120)                          # the backend half-closes first
            c.shutdown(socket.SHUT_WR)
            reader.join(120)
            data, how = got[0] if got else (b"", "hang")
            want = stream(seed + 2, plan["down"])
            sent = head + up
            wait_until(lambda: seed in backend.seen, 60, "the backend's record", 0.01)
            problems = []
            if how != "eof" or data != want:
                problems.append(f"down ({how}): {where(data, want)}")
            if backend.seen[seed] != (hashlib.sha256(sent).hexdigest(), len(sent)):
                problems.append(f"up: backend read {backend.seen[seed][1]} bytes for {len(sent)}, digest "
                                f"{'equal' if backend.seen[seed][0] == hashlib.sha256(sent).hexdigest() else 'differs'}")
            with lock:
                totals["bytes"] += len(sent) + len(data)
                totals["eof"] += 1
                ports[local] = {"up": len(sent), "down": plan["down"], "plan": plan}
                failures.extend(f"{plan}: {p}" for p in problems)
        finally:
            c.close()

    run_clients(run, plans, workers=4)
    after = nstat()
    # every connection that ended in EOF: its log line's counts, exactly
    pattern = re.compile(r"client=\[?[0-9a-f.:]+\]?:(\d+) .*? up=(\d+) down=(\d+) .*?reason=(\S+)")

    def logged() -> dict:
        return {int(m.group(1)): m for m in pattern.finditer(d.log_text()) if int(m.group(1)) in ports}

    try:
        wait_until(lambda: len(logged()) >= len(ports), 60, "an access-log line per connection", 0.1)
    except AssertionError:
        missing = sorted(set(ports) - set(logged()))
        raise AssertionError(f"{len(missing)} connections without a log line, e.g. "
                             f"{[ports[p]['plan'] for p in missing[:3]]}\n" + d.log_text()[-3000:])
    miscounted = 0
    for port, m in logged().items():
        want = ports[port]
        if (m.group(4), int(m.group(2)), int(m.group(3))) != ("eof", want["up"], want["down"]):
            miscounted += 1
            failures.append(f"log: {m.group(0)} for up={want['up']} down={want['down']} ({want['plan']['kind']})")
    kernel = kernel_stats(d)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in NSTAT}
    line = (f"STRESS kernel-relay runs={RUNS} eof={totals['eof']} resets={totals['reset']} "
            f"GiB={totals['bytes'] / (1 << 30):.2f} pairs={kernel['pairs']} fallbacks={kernel['fallbacks']} "
            f"overruns={kernel['overruns']} max_backlog={kernel['max_backlog']} "
            f"failures={len(failures)} miscounted={miscounted} "
            + " ".join(f"{k}={v}" for k, v in delta.items()))
    print(line)
    if os.environ.get("EPOLLMUX_STRESS_OUT"):
        with open(os.environ["EPOLLMUX_STRESS_OUT"], "a") as f:
            f.write(line + "\n")
    backend.close()
    assert not failures, "\n".join(failures[:20])
    assert "Traceback" not in d.log_text()
    assert kernel["pairs"] > 0 and kernel["overruns"] == 0, kernel
