"""The performance targets (bench/README.md), each checked against one run's medians and marked met or missed.

Owns: which subject each target is about (epollmux's default relay, `epollmux-adaptive`, and its 2-worker
twin for TCP; `epollmux-tls` for TLS), the reference it is compared with in the same run, the goal, the
verdict, and the markdown table RESULTS.md opens with. Reads only the results dict the driver assembled
(bench.json); runs nothing and writes nothing; imports only bench.harness.stats and bench.harness.fmt.

A verdict is True (met), False (missed) or None (not measured in this run: a section, subject or
reading is missing). Every ratio is median over median from the same run, so load from other work on a
shared machine weighs on both sides.
"""

from __future__ import annotations

from bench.harness.fmt import _f, _x, label
from bench.harness.stats import median, ratio

SUBJECT = "epollmux-adaptive"            # relay = adaptive, the default
SUBJECT_2W = "epollmux-adaptive-2w"
TLS_SUBJECT = "epollmux-tls"
IDLE_KB = 0.5                            # RSS per held idle connection
KEEPALIVE_SSLH_EV = 80_000               # issue 19: sslh-ev 2.3.1's keep-alive req per proxy CPU-s on this machine
SSLH = ("sslh-select", "sslh-fork")      # Debian's sslh 1.20; sslh-ev 2.3.1 is not packaged
CONNRATE = ((SUBJECT, "haproxy", 1.0, "1 worker vs HAProxy nbthread 1"),
            (SUBJECT_2W, "haproxy-2t", 1.2, "2 workers vs HAProxy nbthread 2"))
TLS = (("full-ecdsa", "TLS full handshakes/s, ECDSA P-256", "haproxy-tls"),
       ("full-rsa", "TLS full handshakes/s, RSA-2048", "haproxy-tls"),
       ("keepalive", "TLS keep-alive req/s", "haproxy-tls"),
       ("bulk", "TLS bulk MB/s", "stunnel"))
TLS_2CORE = {"epollmux-tls-2w": {"haproxy-tls": "haproxy-tls-2t", "stunnel": "stunnel"}}
BULK = 1.2


def _row(target: str, value: str, goal: str, met) -> dict:
    return {"target": target, "value": value, "goal": goal, "met": None if met is None else bool(met)}


def _get(rows: dict, name: str, *keys):
    """rows[name][k1][k2]..., or None when any step is missing."""
    v = rows.get(name)
    for k in keys:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def _ratio_row(target: str, mine, ref, ref_name: str, goal: float, fmt: str = "{:.0f}") -> dict:
    """A ≥ goal × reference target: value = ratio (mine vs reference medians)."""
    r = ratio(mine, ref)
    value = f"{_x(r)} ({_f(median(mine), fmt)} vs {_f(median(ref), fmt)})"
    return _row(target, value, f"≥ {goal:.2f}× {label(ref_name)}", None if r is None else r >= goal)


def idle_targets(sec: dict, subject: str = SUBJECT) -> list[dict]:
    row = next((r for r in sec["summary"] if r["subject"] == subject), None)
    what = "idle: RSS per held idle connection (every one proven by a round trip)"
    goal = f"≤ {IDLE_KB:.2f} KB, all held"
    if row is None or row.get("rss_per_conn_kb") is None:
        return [_row(what, (row or {}).get("error", "not measured"), goal, None)]
    kb, held, n = row["rss_per_conn_kb"], row.get("ping_ok") or 0, row["n"]
    all_held = row.get("all_held", held == n) and held == n
    return [_row(what, f"{kb:.2f} KB ({held} of {n} held)", goal, kb <= IDLE_KB and all_held)]


def connrate_targets(sec: dict) -> list[dict]:
    rows = {r["subject"]: r for r in sec["summary"]}
    out = []
    a, b = (median(_get(rows, n, "unloaded", "p50_ms")) for n in (SUBJECT, "sslh-select"))
    value = f"{_f(a, '{:.3f}')} ms vs {_f(b, '{:.3f}')} ms" + (f" ({a / b:.2f}×)" if a and b else "")
    out.append(_row("unloaded new-connection p50 (connect to EOF)", value, "≤ sslh-select",
                    None if a is None or b is None else a <= b))
    def kpc(name):
        return _get(rows, name, "keepalive", "req_per_cpu_s")

    best = max((n for n in SSLH if median(kpc(n)) is not None), key=lambda n: median(kpc(n)), default=None)
    if best is None:
        out.append(_row("keep-alive req per proxy CPU-s vs sslh's best", "sslh not measured",
                        "≥ best sslh of the run", None))
    else:
        out.append(_ratio_row(f"keep-alive req per proxy CPU-s vs sslh's best of the run ({best})",
                              kpc(SUBJECT), kpc(best), best, 1.0))
    m = median(kpc(SUBJECT))
    out.append(_row("keep-alive req per proxy CPU-s vs sslh-ev 2.3.1 (not installed: issue 19's figure)",
                    f"{_f(m, '{:.0f}')} vs {KEEPALIVE_SSLH_EV}" + (f" ({m / KEEPALIVE_SSLH_EV:.2f}×)" if m else ""),
                    f"≥ {KEEPALIVE_SSLH_EV:,}", None if m is None else m >= KEEPALIVE_SSLH_EV))
    for name, ref, goal, what in CONNRATE:
        out.append(_ratio_row(f"new connections/s (`Connection: close`), {what}", _get(rows, name, "close", "rps"),
                              _get(rows, ref, "close", "rps"), ref, goal))
    return out


def bulk_targets(sec: dict) -> list[dict]:
    out = []
    for streams in sec["params"]["streams"]:
        rows = {r["subject"]: r for r in sec["summary"] if r["streams"] == streams}
        mine, ref = rows.get(SUBJECT, {}), rows.get("haproxy", {})
        for key, what, fmt in (("gbps", "Gbit/s", "{:.2f}"), ("gbit_per_cpu_s", "Gbit per proxy CPU-s", "{:.1f}")):
            out.append(_ratio_row(f"bulk {streams} stream{'s' if streams > 1 else ''}: {what}",
                                  mine.get(key), ref.get(key), "haproxy", BULK, fmt))
    return out


def tls_targets(sec: dict) -> list[dict]:
    rows = {r["subject"]: r for r in sec["summary"]}
    out = []
    pairs = [(TLS_SUBJECT, {"haproxy-tls": "haproxy-tls", "stunnel": "stunnel"}, "1 worker")]
    pairs += [(n, refs, "2 workers") for n, refs in TLS_2CORE.items() if n in rows]
    for name, refs, cores in pairs:
        for mode, what, ref in TLS:
            ref = refs[ref]
            out.append(_ratio_row(f"{what}, epollmux {cores}", _get(rows, name, mode, "rate"),
                                  _get(rows, ref, mode, "rate"), ref, 1.0))
    return out


def targets(results: dict) -> list[dict]:
    """The performance targets for this run, in their order; a section not run gives no rows."""
    secs = {sec["section"]: sec for sec in results["sections"]}
    out = []
    if "idle" in secs:
        out += idle_targets(secs["idle"])
    if "connrate" in secs:
        out += connrate_targets(secs["connrate"])
    if "tls" in secs:
        out += tls_targets(secs["tls"])
    if "bulk" in secs:
        out += bulk_targets(secs["bulk"])
    return out


def targets_md(results: dict) -> str:
    rows = targets(results)
    if not rows:
        return ""
    mark = {True: "met", False: "**missed**", None: "not measured"}
    met = sum(r["met"] is True for r in rows)
    lines = ["## Issue 19 targets (epollmux's default relay, adaptive; epollmux 1 worker for TLS)", "",
             f"{met} of {len(rows)} met. Ratios are medians over medians of this run (a shared machine: "
             "see the load average above). sslh-ev 2.3.1, the issue's C reference, is not installed here "
             "(Debian ships sslh 1.20, fork and select): keep-alive efficiency is compared with the best "
             "sslh of the run and with the issue's 80k figure.", "",
             "| target | value | goal | |", "|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['value']} | {r['goal']} | {mark[r['met']]} |" for r in rows]
    return "\n".join(lines) + "\n"


def compare_md(runs: list[tuple[str, dict]]) -> str:
    """The target tables of several runs side by side: (name, results) each; one row per target."""
    tables = [(name, {r["target"]: r for r in targets(res)}, res) for name, res in runs]
    order = []
    for _, rows, _ in tables:
        order += [t for t in rows if t not in order]
    mark = {True: "met", False: "**missed**", None: "not measured"}
    lines = ["| run | started | load average at start → end | epollmux |", "|---|---|---|---|"]
    lines += [f"| {name} | {res.get('started', '?')} | {res.get('machine', {}).get('load_start', '?')} → "
              f"{res.get('machine', {}).get('load_end', '?')} | {res.get('versions', {}).get('epollmux', '?')} |"
              for name, _, res in tables]
    lines += ["", "| target | goal | " + " | ".join(name for name, _, _ in tables) + " |",
              "|---|---|" + "---|" * len(tables)]
    for t in order:
        goal = next(rows[t]["goal"] for _, rows, _ in tables if t in rows)
        cells = [f"{rows[t]['value']}: {mark[rows[t]['met']]}" if t in rows else "—" for _, rows, _ in tables]
        lines.append(f"| {t} | {goal} | " + " | ".join(cells) + " |")
    both = [t for t in order if all(rows.get(t, {}).get("met") for _, rows, _ in tables)]
    lines += ["", f"Met in every run: {len(both)} of {len(order)}" + (f" ({'; '.join(both)})." if both else ".")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python3 -m bench.harness.targets RUN1/bench.json RUN2/bench.json ...`: the runs' target tables side by side."""
    import json
    import sys
    paths = sys.argv[1:] if argv is None else argv
    runs = []
    for i, path in enumerate(paths, 1):
        with open(path) as f:
            runs.append((f"run {i}", json.load(f)))
    print(compare_md(runs), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
