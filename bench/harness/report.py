"""Turns a run's results into files: JSON, a markdown table and a PNG chart per section, RESULTS.md.

Owns: every output format. Reads only the results dict the driver assembled; runs nothing.
Writes bench/results/{bench.json, SECTION.md, SECTION.png} and bench/RESULTS.md (the latest run,
with date, machine and versions). matplotlib is a bench-only dependency: without it the PNGs are
skipped and the markdown says so.
"""

from __future__ import annotations

import json
import os

from bench.harness import report_tls
from bench.harness.fmt import LABELS, _bars, _f, _med, _pct, _series, _x


# --- markdown ---------------------------------------------------------------------------------
def bulk_md(sec: dict) -> str:
    p = sec["params"]
    lines = [f"iperf3, {p['seconds']} s per run, {p['repeat']} runs each (median, min–max); "
             "proxy CPU = all the subject's processes; ratios are medians over HAProxy's. "
             "Host CPU-s = the whole machine's busy time during a run less unrelated processes: the relay, "
             "iperf3 (both ends) and the kernel's work for them, wherever it ran (bench/hostcpu.py). It is the "
             "figure comparable across direct, splice and sockmap: a kernel relay's work runs in kworkers and "
             "in softirqs charged to whichever task they interrupted (often iperf3), which proxy CPU cannot "
             "see. Kernel = kernel threads plus interrupt time charged to no process (noise of either sign "
             "included). \"Unrelated CPU-s\" is other processes' work during a run: the higher, the less a "
             "run's figures can be trusted; kernel threads and softirqs also serve other work, so a busy "
             "machine inflates host and kernel CPU-s too.", ""]
    for streams in p["streams"]:
        lines += [f"**{streams} stream{'s' if streams > 1 else ''}**", "",
                  "| subject | Gbit/s | × HAProxy | proxy CPU-s per run | user-mode share | Gbit per proxy CPU-s "
                  "| × HAProxy | host CPU-s per run | of which kernel | Gbit per host CPU-s | unrelated CPU-s per run "
                  "| failed runs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in sec["summary"]:
            if row["streams"] != streams:
                continue
            lines.append(f"| {LABELS.get(row['subject'], row['subject'])} | {_med(row['gbps'])} | "
                         f"{_x(row['gbps_vs_ref'])} | {_med(row['cpu_s'], spread=False)} | "
                         f"{_pct(row.get('user_share'))} | "
                         f"{_med(row['gbit_per_cpu_s'])} | {_x(row['eff_vs_ref'])} | "
                         f"{_med(row.get('host_cpu_s'), spread=False)} | "
                         f"{_med(row.get('kernel_cpu_s'), spread=False)} | "
                         f"{_med(row.get('gbit_per_host_cpu_s'))} | "
                         f"{_med(row.get('unrelated_cpu_s'), spread=False)} | {row['errors']} |")
        lines.append("")
    return "\n".join(lines)


def connrate_md(sec: dict) -> str:
    p = sec["params"]
    lines = [f"nginx (1 worker, 34-byte body) behind each subject; wrk -t1 -c{p['connections']} "
             f"-d{p['seconds']}s, {p['repeat']} runs each (median, min–max). `close` = one TCP "
             "connection per request (`Connection: close`); unloaded = one connection at a time, "
             f"connect to EOF, {p['latency_count']} sequential connections per run (Python client).", "",
             "| subject | close req/s | × HAProxy | close p50 / p99 ms | close errors | req per proxy CPU-s "
             "| user-mode share (close) | other CPU-s (close) | keep-alive req/s | × HAProxy | keep-alive p50 / p99 ms "
             "| unloaded p50 / p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sec["summary"]:
        c, k, u = row["close"], row["keepalive"], row["unloaded"]
        lines.append(
            f"| {LABELS.get(row['subject'], row['subject'])} | {_med(c['rps'], '{:.0f}')} | {_x(c['rps_vs_ref'])} | "
            f"{_med(c['p50_ms'], '{:.2f}', False)} / {_med(c['p99_ms'], '{:.2f}', False)} | {c['errors']} | "
            f"{_med(c['req_per_cpu_s'], '{:.0f}', False)} | {_pct(c.get('user_share'))} | "
            f"{_med(c.get('other_cpu_s'), spread=False)} | "
            f"{_med(k['rps'], '{:.0f}')} | {_x(k['rps_vs_ref'])} | "
            f"{_med(k['p50_ms'], '{:.2f}', False)} / {_med(k['p99_ms'], '{:.2f}', False)} | "
            f"{_med(u['p50_ms'], '{:.3f}', False)} / {_med(u['p99_ms'], '{:.3f}', False)} |")
    return "\n".join(lines) + "\n"


def idle_md(sec: dict) -> str:
    lines = ["Idle connections held through each subject, every one proven by a byte round trip "
             "before and after the memory reading; per-connection figures are (held − baseline) / held, "
             "summed over the subject's processes (RSS counts pages shared between them twice, PSS splits "
             "them, USS counts private pages only).", "",
             "| subject | N asked (cap) | held after 2nd round trip | open time s | processes | baseline RSS / PSS MB "
             "| RSS KB/conn | PSS KB/conn | USS KB/conn | RSS MB after close / after a 2nd cycle | still running |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sec["summary"]:
        if "error" in row or "loaded" not in row:
            lines.append(f"| {LABELS.get(row['subject'], row['subject'])} | — | {row.get('error', 'no reading')} | | | | | | | | |")
            continue
        lines.append(
            f"| {LABELS.get(row['subject'], row['subject'])} | {row['n']} ({row['cap_reason']}) | {row.get('ping_ok')} | "
            f"{_f(row.get('open_seconds'), '{:.1f}')} | {row['loaded']['processes']} | "
            f"{row['base']['rss_kb'] / 1024:.1f} / {row['base']['pss_kb'] / 1024:.1f} | "
            f"{_f(row.get('rss_per_conn_kb'))} | {_f(row.get('pss_per_conn_kb'))} | {_f(row.get('uss_per_conn_kb'))} | "
            f"{row['after_close']['rss_kb'] / 1024:.1f} / {row['after_2nd_close']['rss_kb'] / 1024:.1f} | "
            f"{'yes' if row.get('alive') else 'NO'} |")
    return "\n".join(lines) + "\n"


MD = {"bulk": bulk_md, "connrate": connrate_md, "idle": idle_md, **report_tls.MD}
TITLES = {"bulk": "Bulk throughput (iperf3)", "connrate": "Connection rate and latency (nginx + wrk)",
          "idle": "Idle connections: memory per connection", **report_tls.TITLES}


# --- charts -----------------------------------------------------------------------------------
def chart(sec: dict, path: str, plt) -> None:
    kind = sec["section"]
    if kind in report_tls.MD:
        fig = report_tls.chart(sec, plt)
    elif kind == "bulk":
        streams = sec["params"]["streams"]
        fig, axes = plt.subplots(2, len(streams), figsize=(5 * len(streams), 7), squeeze=False)
        for col, st in enumerate(streams):
            rows = [r for r in sec["summary"] if r["streams"] == st]
            names = [r["subject"] for r in rows]
            _bars(axes[0][col], names, *_series(rows, lambda r: r["gbps"]), f"{st} stream(s): Gbit/s", "Gbit/s")
            prox = [r for r in rows if r["subject"] != "direct"]
            _bars(axes[1][col], [r["subject"] for r in prox], *_series(prox, lambda r: r["gbit_per_cpu_s"]),
                  f"{st} stream(s): Gbit per proxy CPU-second", "Gbit / CPU-s")
    elif kind == "connrate":
        rows = sec["summary"]
        names = [r["subject"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        _bars(axes[0], names, *_series(rows, lambda r: r["close"]["rps"]), "new connections/s (Connection: close)", "req/s")
        _bars(axes[1], names, *_series(rows, lambda r: r["keepalive"]["rps"]), "keep-alive req/s", "req/s")
        _bars(axes[2], names, *_series(rows, lambda r: r["unloaded"]["p50_ms"]), "unloaded connect→EOF p50", "ms")
    elif kind == "idle":
        rows = [r for r in sec["summary"] if "rss_per_conn_kb" in r]
        names = [f"{r['subject']}\n(N={r.get('ping_ok')})" for r in rows]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        for ax, key, title in ((axes[0], "rss_per_conn_kb", "RSS per idle connection"),
                               (axes[1], "pss_per_conn_kb", "PSS per idle connection")):
            vals = [r[key] for r in rows]
            _bars(ax, [r["subject"] for r in rows], vals, vals, vals, title, "KB")
            ax.set_xticklabels(names, rotation=0, fontsize=8)
    else:
        return
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- files ------------------------------------------------------------------------------------
def write(results: dict, outdir: str, results_md: str) -> list[str]:
    os.makedirs(outdir, exist_ok=True)
    written = []
    with open(os.path.join(outdir, "bench.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    written.append(os.path.join(outdir, "bench.json"))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    body = [header_md(results), targets_md(results)]
    for sec in results["sections"]:
        kind = sec["section"]
        md = MD[kind](sec)
        with open(os.path.join(outdir, f"{kind}.md"), "w") as f:
            f.write(f"## {TITLES[kind]}\n\n{md}")
        written.append(os.path.join(outdir, f"{kind}.md"))
        body.append(f"## {TITLES[kind]}\n\n{md}")
        if plt is not None:
            png = os.path.join(outdir, f"{kind}.png")
            chart(sec, png, plt)
            written.append(png)
            body.append(f"![{kind}](results/{kind}.png)\n")
        else:
            body.append("(chart skipped: matplotlib is not installed; `make bench-deps`)\n")
    body.append(notes_md(results))
    with open(results_md, "w") as f:
        f.write("\n".join(body))
    written.append(results_md)
    return written


def targets(results: dict, subject: str = "epollmux-splice") -> list[dict]:
    """The performance targets for one epollmux subject, checked against this run's medians."""
    out = []
    secs = {sec["section"]: sec for sec in results["sections"]}

    def add(what, value, goal, ok):
        out.append({"target": what, "value": value, "goal": goal,
                    "met": None if ok is None else bool(ok)})

    if "bulk" in secs:
        for row in secs["bulk"]["summary"]:
            if row["subject"] == subject:
                st = row["streams"]
                for key, name in (("gbps_vs_ref", "Gbit/s"), ("eff_vs_ref", "Gbit per CPU-s")):
                    v = row[key]
                    add(f"bulk {st} stream(s): {name} vs HAProxy", _x(v), "≥ 1.00×", None if v is None else v >= 1.0)
    if "connrate" in secs:
        rows = {r["subject"]: r for r in secs["connrate"]["summary"]}
        if subject in rows:
            v = rows[subject]["close"]["rps_vs_ref"]
            add("new connections/s vs HAProxy", _x(v), "≥ 1.00×", None if v is None else v >= 1.0)
            mine = stats_median(rows[subject]["unloaded"]["p50_ms"])
            ref = stats_median(rows.get("sslh-select", {}).get("unloaded", {}).get("p50_ms"))
            add("unloaded new-connection p50 vs sslh-select",
                f"{_f(mine, '{:.3f}')} ms vs {_f(ref, '{:.3f}')} ms", "≤ sslh-select",
                None if mine is None or ref is None else mine <= ref)
    if "idle" in secs:
        for row in secs["idle"]["summary"]:
            if row["subject"] == subject and "rss_per_conn_kb" in row:
                add(f"idle: RSS per connection ({row.get('ping_ok')} held of {row['n']})",
                    f"{row['rss_per_conn_kb']:.2f} KB", "≤ 2.0 KB, all held",
                    row["rss_per_conn_kb"] <= 2.0 and row.get("all_held"))
    if "tls" in secs:
        for what, value, goal, ok in report_tls.targets(secs["tls"]):
            add(what, value, goal, ok)
    return out


def stats_median(s):
    return s["median"] if s else None


def targets_md(results: dict) -> str:
    rows = targets(results)
    if not rows:
        return ""
    mark = {True: "met", False: "**missed**", None: "—"}
    lines = ["## Performance targets (this run: epollmux splice for TCP, epollmux 1 worker for TLS)", "", "| target | value | goal | |", "|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['value']} | {r['goal']} | {mark[r['met']]} |" for r in rows]
    return "\n".join(lines) + "\n"


def header_md(results: dict) -> str:
    m, v = results["machine"], results["versions"]
    lines = ["# epollmux benchmark results (latest run)", "",
             f"Run {results['started']} → {results['finished']} ({results['wall_seconds']:.0f} s), "
             f"`python3 -m bench.harness.run {' '.join(results['argv'])}`.", "",
             f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gb']:.0f} GB, kernel {m['kernel']}, "
             f"Python {m['python']}, fd limit {m['nofile']}. Load average at start {m['load_start']}, "
             f"at end {m['load_end']} (other work on the machine shows here and widens the spread).", "",
             "Versions: " + "; ".join(f"{k} {val}" for k, val in v.items()) + ".", ""]
    if results.get("epollmux_at_end"):
        lines += [f"**The epollmux tree changed during the run**: {v['epollmux']} at the start, "
                  f"{results['epollmux_at_end']} at the end; each subject runs the code it loaded when it started.", ""]
    return "\n".join(lines)


def notes_md(results: dict) -> str:
    return "\n".join(["## How it is measured", ""] + [f"- {n}" for n in results["notes"]]) + "\n"
