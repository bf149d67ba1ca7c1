"""Report parts of the sniff and tls sections: markdown tables, charts, and the TLS rows of the performance targets.

Owns: how bench.sections.sniff's and bench.sections.tls's results read. Runs nothing; bench.harness.report calls it (MD, TITLES,
chart(), targets()) and writes the files.
"""

from __future__ import annotations

from bench.harness.fmt import _bars, _med, _pct, _series, _x, label

MODE_TITLES = {
    "full-ecdsa": ("Full handshakes, ECDSA P-256 (resumption off)", "handshakes/s", "handshake"),
    "full-rsa": ("Full handshakes, RSA-2048 (resumption off)", "handshakes/s", "handshake"),
    "resumed": ("Resumed handshakes (ECDSA P-256, resumption on)", "handshakes/s", "handshake"),
    "keepalive": ("Keep-alive requests over TLS", "req/s", "request"),
    "bulk": ("Bulk, one way (nginx → terminator → curl)", "MB/s", "MB"),
}
TLS_SUBJECT = "epollmux-tls"


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


MD = {"sniff": sniff_md, "tls": tls_md}
TITLES = {"sniff": "Sniffing: probe decision cost and SNI routing ",
          "tls": "TLS termination (issues 4 and 6)"}


# --- charts -----------------------------------------------------------------------------------
def chart(sec: dict, plt):
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


# --- targets ----------------------------------------------------------------------------------
def targets(sec: dict, subject: str = TLS_SUBJECT) -> list[tuple]:
    """(target, value, goal, met) rows of the performance targets for the TLS section."""
    row = next((r for r in sec["summary"] if r["subject"] == subject), None)
    if row is None:
        return []
    out = []
    goals = [("full-ecdsa", "TLS full handshakes/s, ECDSA P-256", "haproxy"),
             ("full-rsa", "TLS full handshakes/s, RSA-2048", "haproxy"),
             ("resumed", "TLS resumed handshakes/s", "haproxy"),
             ("keepalive", "TLS keep-alive req/s", "haproxy"),
             ("bulk", "TLS bulk MB/s", "stunnel")]
    peer = {"haproxy": "HAProxy", "stunnel": "stunnel"}
    for key in ("rate", "eff"):
        for mode, what, ref in goals:
            v = row[mode][f"{key}_vs_{ref}"]
            text = what if key == "rate" else what.replace("/s", " per proxy CPU-s").replace("MB/s", "MB per proxy CPU-s")
            out.append((f"{text} vs {peer[ref]}", _x(v), "≥ 1.00×", None if v is None else v >= 1.0))
    return out
