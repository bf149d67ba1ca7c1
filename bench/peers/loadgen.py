"""Load generators every section and tool drives: wrk (HTTP/HTTPS, close or keep-alive) and iperf3 (bulk).

Owns: their command lines and the parsing of their output into dicts. Must not import: bench.sections, bench.tools.
"""

from __future__ import annotations

import json
import re
import subprocess

from bench.harness.procs import HOST, run

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    res: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        return {"error": out.strip()[-300:] or "no output"}
    res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if m:
        res["requests"] = int(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}_ms"] = _ms(m.group(1)) if m else None
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
        res["non_2xx"] = int(m.group(1))
    res["errors"] = errors
    return res


def wrk(port: int, seconds: float, connections: int, close: bool, scheme: str = "http",
        host: str = HOST) -> dict:
    """wrk -t1 for `seconds`; scheme https makes wrk a TLS client (it resumes sessions when the server
    lets it, and sends `host` as SNI)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"{scheme}://{host}:{port}/")
    try:
        out = run(argv, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        return {"error": "wrk timed out"}
    return parse_wrk(out.stdout + out.stderr)


def _iperf3_json(argv: list[str], timeout: float) -> dict:
    """iperf3 -J's document, or {"error": ...} with what it said when it failed."""
    out = run(argv, timeout=timeout)
    try:
        doc = json.loads(out.stdout)
    except json.JSONDecodeError:
        return {"error": (out.stderr or out.stdout).strip()[-300:] or f"exit {out.returncode}"}
    return {"error": doc["error"]} if "error" in doc else doc


def iperf3(port: int, seconds: float, streams: int) -> dict:
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(max(1, round(seconds))), "-P", str(streams),
            "-J", "--connect-timeout", "3000"]
    doc = _iperf3_json(argv, seconds + 20)
    if "error" in doc:
        return doc
    recv = doc["end"]["sum_received"]
    return {"bits_per_second": recv["bits_per_second"], "bytes": recv["bytes"],
            "seconds": recv["seconds"]}


def iperf3_udp(port: int, rate: str, size: int, seconds: float) -> dict:
    """One UDP flow at a fixed rate (iperf3 -u -b): Gbit/s received, datagrams sent and lost."""
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-u", "-b", rate, "-l", str(size), "-t",
            str(max(1, round(seconds))), "-J", "--connect-timeout", "3000"]
    doc = _iperf3_json(argv, seconds + 30)
    if "error" in doc:
        return doc
    s = doc["end"].get("sum_received") or doc["end"]["sum"]
    packets = s.get("packets") or doc["end"]["sum"].get("packets", 0)
    lost = s.get("lost_packets", doc["end"]["sum"].get("lost_packets", 0))
    return {"gbps": s["bits_per_second"] / 1e9, "packets": packets, "lost": lost,
            "loss": lost / packets if packets else None, "seconds": s.get("seconds", seconds)}
