"""Turns a run's results into files: JSON, a markdown table and a PNG chart per section, RESULTS.md.

Owns: every output format. Reads only the results dict the driver assembled; runs nothing.
Writes bench/results/{bench.json, SECTION.md, SECTION.png} and bench/RESULTS.md (the latest run,
with date, machine and versions, and the target table of bench.harness.targets). matplotlib is a bench-only dependency: without it the PNGs are
skipped and the markdown says so.
"""

from __future__ import annotations

import json
import os

from bench.harness.fmt import LABELS, _bars, _f, _med, _pct, _series, _x, label
from bench.harness.targets import targets_md


# --- markdown (bulk, connrate, idle) ---------------------------------------------------------------------------------
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


MODE_TITLES = {
    "full-ecdsa": ("Full handshakes, ECDSA P-256 (resumption off)", "handshakes/s", "handshake"),
    "full-rsa": ("Full handshakes, RSA-2048 (resumption off)", "handshakes/s", "handshake"),
    "resumed": ("Resumed handshakes (ECDSA P-256, resumption on)", "handshakes/s", "handshake"),
    "keepalive": ("Keep-alive requests over TLS", "req/s", "request"),
    "bulk": ("Bulk, one way (nginx → terminator → curl)", "MB/s", "MB"),
}


# --- sniff ------------------------------------------------------------------------------------
def sniff_md(sec: dict) -> str:
    p, d = sec["params"], sec.get("decision", {})
    lines = []
    if d.get("cases"):
        table = ", ".join(f"`{probe}`" + (f" (`{'; '.join(f'{k} = ' + ', '.join(v) for k, v in o.items())}`)" if o else "")
                          for probe, o in d["table"])
        lines += [f"**Probe decision cost** (`python3 -m bench.tools.sniffcost`, Python {d['python']}): µs per call on a "
                  f"real first flight (tests/fixtures/probes), route table {table}; {d['cases'][0]['summary']['n']} "
                  "timed runs each (median, min–max; the minimum is the least disturbed by other work).", "",
                  "| case | bytes | outcome | µs per call |", "|---|---|---|---|"]
        for c in d["cases"]:
            what = ("`decide()`: " if c["function"].startswith("decide") else "") + c["what"]
            lines.append(f"| {what} | {c['bytes']} | {c['outcome']} | {_med(c['summary'])} |")
        lines.append("")
    elif d.get("error"):
        lines += [f"Probe decision cost: {d['error']}", ""]
    lines += [f"**New TLS connections per second through an SNI router**: nginx (1 worker) terminates TLS 1.3 "
              f"({p['certificate']}, session tickets on) behind each subject; wrk -t1 -c{p['connections']} "
              f"-d{p['seconds']}s over https with `Connection: close`, SNI `{p['sni']}`, {p['repeat']} runs each "
              "(median, min–max). wrk resumes its sessions, so after the first connection per slot nginx does "
              "resumed handshakes. Routers: epollmux `probe = tls` + `sni` in the example table (ssh, tls, http, any); "
              "HAProxy `tcp-request inspect-delay` + `use_backend ... if { req.ssl_sni -i ... }`. "
              "\"Sniffing µs\" = the router's CPU per connection minus the same proxy's without sniffing "
              "(epollmux `probe = any`, HAProxy plain TCP) in the same run.", "",
              "| subject | conn/s | × HAProxy SNI | p50 / p99 ms | errors | proxy CPU µs per conn | sniffing µs "
              "| conn per proxy CPU-s | × HAProxy SNI | user-mode share | other CPU-s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sec["summary"]:
        sniff_us = "—" if r.get("sniff_us") is None else "±0" if abs(r["sniff_us"]) < 0.5 else f"{r['sniff_us']:+.0f}"
        lines.append(f"| {label(r['subject'])} | {_med(r['rps'], '{:.0f}')} | {_x(r['rps_vs_ref'])} | "
                     f"{_med(r['p50_ms'], '{:.2f}', False)} / {_med(r['p99_ms'], '{:.2f}', False)} | "
                     f"{r['errors']}{' + ' + str(r['failed_runs']) + ' failed runs' if r['failed_runs'] else ''} | "
                     f"{_med(r['cpu_us_per_conn'], '{:.0f}')} | {sniff_us} | {_med(r['conn_per_cpu_s'], '{:.0f}', False)} | "
                     f"{_x(r['eff_vs_ref'])} | {_pct(r['user_share'])} | {_med(r['other_cpu_s'], spread=False)} |")
    bad = {n: c for n, c in p.get("checks", {}).items() if c.get("error") or "200" not in c.get("status", "")}
    lines += ["", "Check before the runs (one request through each subject with Python's ssl, SNI as above): "
              + ("every subject answered 200 over " + ", ".join(sorted({c.get('version', '?') for c in
                 p.get('checks', {}).values()})) + "." if not bad else
                 "; ".join(f"{n}: {c.get('error') or c.get('status')}" for n, c in bad.items()))]
    health = p.get("health", {})
    if health:
        lines += ["", "RSS (all processes) before → after the runs, MB, and lines logged: " + "; ".join(
            f"{label(n)} {_health(h).replace(' | ', ' MB, ', 1).rstrip(' |')} lines" for n, h in health.items()
            if "rss_kb_end" in h and n != "direct") + "."]
    return "\n".join(lines) + "\n"


# --- tls --------------------------------------------------------------------------------------
def _health(h: dict | None) -> str:
    """RSS of all the subject's processes before → after the runs, and lines it logged: | RSS | log |"""
    if not h or "rss_kb_end" not in h:
        return "— | — |"
    alive = "" if h.get("alive", True) else " **(died)**"
    return (f"{h['rss_kb_start'] / 1024:.1f} → {h['rss_kb_end'] / 1024:.1f}{alive} | "
            f"{'—' if h.get('log_lines') is None else h['log_lines']} |")


def _checks_md(checks: dict, health: dict) -> list[str]:
    lines = ["Checks before the runs (Python's ssl, two connections, the second offering the first's session), "
             "the RSS of each instance (all its processes) before and after the runs, and the lines it logged "
             "(epollmux at `log_level = warning`; stunnel logs every handshake a client abandons when wrk stops):", "",
             "| subject | instance | version, cipher | status | resumed | RSS MB before → after | log lines |",
             "|---|---|---|---|---|---|---|"]
    for key, c in checks.items():
        name, variant = key.split("/")
        if c.get("error"):
            lines.append(f"| {label(name)} | {variant} | — | **{c['error']}** | — | {_health(health.get(key))}")
            continue
        expect = variant.endswith("resume")
        got = c.get("resumed")
        mark = "yes" if got else "no"
        if got != expect:
            mark = f"**{mark} (expected {'yes' if expect else 'no'})**"
        lines.append(f"| {label(name)} | {variant} | {c.get('version')} {c.get('cipher')} | {c.get('status')} | {mark} | "
                     f"{_health(health.get(key))}")
    return lines + [""]


def tls_md(sec: dict) -> str:
    p = sec["params"]
    lines = [f"Plaintext nginx (1 worker) behind each terminator; TLS 1.3; {p['repeat']} runs each of {p['seconds']} s "
             f"(median, min–max). Handshakes and requests: wrk -t1 -c{p['connections']} over https (`Connection: close` "
             "for handshakes: one request per connection). Bulk: "
             f"{p['streams']} parallel `curl --http1.1` downloads of a large file, MB = 10⁶ bytes. Proxy CPU = all the "
             "subject's processes (cgroup); for \"direct\" it is nginx terminating and serving itself. Ratios are "
             "medians over HAProxy's (bulk: over stunnel's too).", ""]
    for mode, (title, unit, op) in MODE_TITLES.items():
        bulk = mode == "bulk"
        head = (f"| subject | {unit} | × stunnel | × HAProxy | proxy CPU µs per MB | MB per proxy CPU-s | × stunnel "
                "| × HAProxy | user-mode share | other CPU-s | failed |" if bulk else
                f"| subject | {unit} | × HAProxy | p50 / p99 ms | errors | proxy CPU µs per {op} | {op}s per proxy CPU-s "
                "| × HAProxy | user-mode share | other CPU-s |")
        lines += [f"**{title}**", "", head, "|---" * (head.count("|") - 1) + "|"]
        for r in sec["summary"]:
            c = r[mode]
            failed = c["errors"] + c["failed_runs"]
            if bulk:
                lines.append(f"| {label(r['subject'])} | {_med(c['rate'], '{:.0f}')} | {_x(c['rate_vs_stunnel'])} | "
                             f"{_x(c['rate_vs_haproxy'])} | {_med(c['cpu_us_per_op'], '{:.0f}', False)} | "
                             f"{_med(c['ops_per_cpu_s'], '{:.0f}')} | {_x(c['eff_vs_stunnel'])} | {_x(c['eff_vs_haproxy'])} | "
                             f"{_pct(c['user_share'])} | {_med(c['other_cpu_s'], spread=False)} | {failed} |")
            else:
                lines.append(f"| {label(r['subject'])} | {_med(c['rate'], '{:.0f}')} | {_x(c['rate_vs_haproxy'])} | "
                             f"{_med(c['p50_ms'], '{:.2f}', False)} / {_med(c['p99_ms'], '{:.2f}', False)} | "
                             f"{c['errors']}{' + ' + str(c['failed_runs']) + ' failed runs' if c['failed_runs'] else ''} | "
                             f"{_med(c['cpu_us_per_op'], '{:.0f}')} | {_med(c['ops_per_cpu_s'], '{:.0f}', False)} | "
                             f"{_x(c['eff_vs_haproxy'])} | {_pct(c['user_share'])} | {_med(c['other_cpu_s'], spread=False)} |")
        lines.append("")
    lines += _checks_md(p.get("checks", {}), p.get("health", {}))
    return "\n".join(lines)


def udp_md(sec: dict) -> str:
    from bench.sections import udp
    return udp.md(sec)


MD = {"bulk": bulk_md, "connrate": connrate_md, "idle": idle_md, "sniff": sniff_md, "tls": tls_md, "udp": udp_md}
TITLES = {"bulk": "Bulk throughput (iperf3)", "connrate": "Connection rate and latency (nginx + wrk)",
          "idle": "Idle connections: memory per connection",
          "sniff": "Sniffing: probe decision cost and SNI routing ", "tls": "TLS termination (issues 4 and 6)",
          "udp": "UDP flows (issue 18)"}


# --- charts -----------------------------------------------------------------------------------
def chart(sec: dict, path: str, plt) -> None:
    kind = sec["section"]
    if kind in ("sniff", "tls"):
        fig = tls_chart(sec, plt)
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


# --- charts (sniff, tls) -----------------------------------------------------------------------------------
def tls_chart(sec: dict, plt):
    rows = sec["summary"]
    names = [r["subject"] for r in rows]
    if sec["section"] == "sniff":
        cases = sec.get("decision", {}).get("cases", [])
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        _bars(axes[0], [c["case"] for c in cases], *_series(cases, lambda c: c["summary"]),
              "probe decision cost per call", "µs")
        _bars(axes[1], names, *_series(rows, lambda r: r["rps"]), "new TLS connections/s (passthrough)", "conn/s")
        _bars(axes[2], names, *_series(rows, lambda r: r["cpu_us_per_conn"]), "proxy CPU per connection", "µs")
        return fig
    fig, axes = plt.subplots(2, len(MODE_TITLES), figsize=(4 * len(MODE_TITLES), 8), squeeze=False)
    for col, (mode, (title, unit, op)) in enumerate(MODE_TITLES.items()):
        _bars(axes[0][col], names, *_series(rows, lambda r: r[mode]["rate"]), title.split(" (")[0], unit)
        _bars(axes[1][col], names, *_series(rows, lambda r: r[mode]["ops_per_cpu_s"]),
              f"{op}s per proxy CPU-second", f"{op}s / CPU-s")
    return fig


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
