"""The kernel relay's contract under randomized load (`make stress`): one daemon with `relay = sockmap` and
three listeners (IPv4, IPv6, and IPv4 taking a PROXY v1 header, which must stay on splice), a backend that
streams its own bytes while it reads, and randomized connections, a few at a time:
- SHORT short pairs first, many at once (0 to 1000 bytes each way);
- RUNS mixed runs, each drawing its sizes, its write chunking, who half-closes first, whether the client
  reads slowly, resets at once, or resets mid-stream after reading part of the download;
- STALLS clients that read nothing until the worker has ended them with `kernel-backlog` (more than
  64 MiB of redirected bytes queued for them), then read what reached them;
- bulk runs (16-48 MiB each way at once) until the planned volume reaches EPOLLMUX_STRESS_GIB GiB
  (default 1; `make stress STRESS_GIB=4`), shuffled in among the mixed runs.

Checked for every run (tests/support/streamcheck.py): the bytes each side received are exactly the bytes
the other sent, or for a connection cut on purpose a prefix of them (the offset and length of any lost or
duplicated range are reported), and for every connection that ended in EOF the access log's up= and down=
equal what was sent. The figures (runs, GiB, seconds, kernel pairs, TCP retransmits and drops from nstat)
go to one STRESS line. EPOLLMUX_STRESS_SCALE multiplies the counts.
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
from support.streamcheck import check
from epollmux.relay import sockmap

MiB = 1 << 20
SCALE = int(os.environ.get("EPOLLMUX_STRESS_SCALE") or 1)
RUNS, SHORT, STALLS = 240 * SCALE, 400 * SCALE, 2 * SCALE
GIB = float(os.environ.get("EPOLLMUX_STRESS_GIB") or 1)
STALL_DOWN = 160 * MiB          # past 64 MiB of backlog + the client socket's 32 MiB send buffer + its window
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


def make_plans(master: random.Random, v6: bool) -> tuple[list[dict], list[dict]]:
    """(short pairs, the rest shuffled: mixed runs, stalls, bulk runs up to GIB)."""
    def plan(i: int, up: int, down: int, mode: str = "eof", **kw) -> dict:
        kind = master.choices(("v4", "v6", "pp"), (5, 3 if v6 else 0, 2 if mode == "eof" else 0))[0]
        return {"seed": (i << 32) | master.getrandbits(31), "up": up, "down": down, "order": master.randint(0, 1),
                "slow": False, "kind": kind, "mode": mode, **kw}

    short = [plan(i, master.choice((0, 1, 17, 1000)), master.choice((0, 1, 17, 1000))) for i in range(SHORT)]
    rest, n = [], SHORT
    for _ in range(RUNS):
        big = master.random() < 0.12
        size = lambda: master.choice((0, 1, 17, 1000, 65483, 65484, 300_000, 2 * MiB + 3)) if not big \
            else master.randint(8 * MiB, 40 * MiB)
        r = master.random()
        if r < 0.06:
            p = plan(n, size(), size(), "reset")                  # reset right after the first write
        elif r < 0.14:                                            # reset after part of the download
            down = master.randint(MiB, 16 * MiB)
            p = plan(n, size(), down, "resetmid", cut=master.randint(0, down), order=1)
        else:
            p = plan(n, size(), size(), slow=master.random() < 0.1)
        rest.append(p)
        n += 1
    for _ in range(STALLS):
        rest.append(plan(n, 1000, STALL_DOWN, "stall", order=1))
        n += 1
    planned = sum(p["up"] + p["down"] for p in short + rest if p["mode"] == "eof")
    while planned < GIB * (1 << 30):
        p = plan(n, master.randint(16 * MiB, 48 * MiB), master.randint(16 * MiB, 48 * MiB))
        rest.append(p)
        planned += p["up"] + p["down"]
        n += 1
    master.shuffle(rest)
    return short, rest


@pytest.mark.timeout(1800 + int(GIB * 600))
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
    seed0 = int(os.environ.get("EPOLLMUX_STRESS_SEED") or time.time_ns())
    short, rest = make_plans(random.Random(seed0), v6)
    failures: list[str] = []
    totals = {"bytes": 0, "eof": 0, "reset": 0, "resetmid": 0, "stall": 0, "stall_bytes": 0}
    expected: list[dict] = []          # eof runs (exact counts) and stalls (kernel-backlog), by client port
    lock = threading.Lock()
    started = time.monotonic()

    def cut_short(c: socket.socket, plan: dict, local: int) -> bytes:
        """resetmid: read `cut` bytes, then RST. stall: read nothing until the worker ended us."""
        out = bytearray()
        if plan["mode"] == "stall":
            wait_until(lambda: re.search(rf"client=\[?[0-9a-f.:]+\]?:{local} .*reason=kernel-backlog", d.log_text()),
                       120, f"kernel-backlog for client port {local}", 0.1)
            return recv_to_end(c)[0]
        try:
            while len(out) < plan["cut"] and (data := c.recv(MiB)):
                out += data
        except ConnectionResetError:
            pass
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return bytes(out)

    def run(plan: dict) -> None:
        host, port = {"v4": ("127.0.0.1", p4), "v6": ("::1", p6), "pp": ("127.0.0.1", pp)}[plan["kind"]]
        seed, rng, mode = plan["seed"], random.Random(plan["seed"]), plan["mode"]
        c = socket.create_connection((host, port), timeout=120)
        try:
            head = SPEC.pack(plan["order"], plan["down"], seed)
            up = stream(seed + 3, plan["up"])
            local = c.getsockname()[1]                      # the log names the PROXY source: make it ours
            proxy = f"PROXY TCP4 192.0.2.1 192.0.2.2 {local} 80\r\n".encode() if plan["kind"] == "pp" else b""
            first = proxy + head + up[:rng.choice(CHUNKS)]
            c.sendall(first)                                # PROXY header and first payload in one write
            if mode == "reset":
                time.sleep(rng.random() * 0.01)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with lock:
                    totals["reset"] += 1
                return
            if mode in ("resetmid", "stall"):
                data = cut_short(c, plan, local)
                problem = check(data, stream(seed + 2, plan["down"]), prefix=True)
                with lock:
                    totals[mode] += 1
                    totals["stall_bytes" if mode == "stall" else "bytes"] += len(data)
                    if mode == "stall":
                        expected.append({"port": local, "reason": "kernel-backlog", "plan": plan})
                    if problem:
                        failures.append(f"{plan}: down ({mode}, {len(data)} bytes): {problem}")
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
            sent = head + up
            wait_until(lambda: seed in backend.seen, 60, "the backend's record", 0.01)
            problems = []
            problem = check(data, stream(seed + 2, plan["down"]))
            if how != "eof" or problem:
                problems.append(f"down ({how}): {problem}")
            if backend.seen[seed] != (hashlib.sha256(sent).hexdigest(), len(sent)):
                problems.append(f"up: backend read {backend.seen[seed][1]} bytes for {len(sent)}, digest "
                                f"{'equal' if backend.seen[seed][0] == hashlib.sha256(sent).hexdigest() else 'differs'}")
            with lock:
                totals["bytes"] += len(sent) + len(data)
                totals["eof"] += 1
                expected.append({"port": local, "reason": "eof", "up": len(sent), "down": plan["down"], "plan": plan})
                failures.extend(f"{plan}: {p}" for p in problems)
        finally:
            c.close()

    run_clients(run, short, workers=16)
    run_clients(run, rest, workers=4)
    seconds = time.monotonic() - started
    after = nstat()
    # every connection that ended in EOF: a log line with its counts, exactly; every stall: kernel-backlog.
    # Client ports are reused (a reset frees one at once, and its line may come after the next user's),
    # so each expectation takes one matching line among those of its port.
    pattern = re.compile(r"client=\[?[0-9a-f.:]+\]?:(\d+) .*? up=(\d+) down=(\d+) .*?reason=(\S+)")

    def unmatched() -> list[dict]:
        lines: dict[int, list] = {}
        for m in pattern.finditer(d.log_text()):
            lines.setdefault(int(m.group(1)), []).append((m.group(4), int(m.group(2)), int(m.group(3))))
        left = []
        for want in expected:
            have = lines.get(want["port"], [])
            match = next((x for x in have if x[0] == want["reason"] and (want["reason"] != "eof" or
                                                                          x[1:] == (want["up"], want["down"]))), None)
            if match is None:
                left.append({**want, "lines": have})
            else:
                have.remove(match)
        return left

    try:
        wait_until(lambda: not unmatched(), 60, "a matching access-log line per connection", 0.5)
    except AssertionError:
        pass
    miscounted = 0
    for want in unmatched():
        miscounted += want["reason"] == "eof"
        failures.append(f"log: no line with reason={want['reason']} up={want.get('up')} down={want.get('down')} "
                        f"for client port {want['port']} ({want['plan']['kind']}); its lines: {want['lines']}")
    kernel = kernel_stats(d)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in NSTAT}
    line = (f"STRESS kernel-relay seed={seed0} runs={len(short) + len(rest)} short={len(short)} "
            f"eof={totals['eof']} resets={totals['reset']} resets_mid={totals['resetmid']} "
            f"stalls={totals['stall']} stall_MiB={totals['stall_bytes'] / MiB:.0f} GiB={totals['bytes'] / (1 << 30):.2f} seconds={seconds:.0f} "
            f"pairs={kernel['pairs']} fallbacks={kernel['fallbacks']} "
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
    assert kernel["pairs"] > 0 and kernel["overruns"] == STALLS, kernel
