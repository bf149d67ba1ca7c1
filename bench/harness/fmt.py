"""Formatting helpers shared by the report modules: numbers, medians with their spread, ratios, bars.

Owns: how a value, a summary (bench.harness.stats) or a ratio is printed, subject labels, and the bar chart
style (epollmux red, the no-proxy reference grey, peers blue). Pure; writes nothing.
"""

from __future__ import annotations

from bench.peers import subjects

LABELS = {name: cls.label for name, cls in subjects.ALL.items()}
REFERENCES = ("direct", "nginx-tls")      # no proxy: grey in charts


def label(name: str) -> str:
    return LABELS.get(name, name)


def _f(v, fmt="{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def _med(s: dict | None, fmt="{:.2f}", spread=True) -> str:
    if not s:
        return "—"
    text = fmt.format(s["median"])
    if spread and s["n"] > 1:
        text += f" ({fmt.format(s['min'])}–{fmt.format(s['max'])})"
    return text


def _pct(s: dict | None) -> str:
    return "—" if not s else f"{s['median'] * 100:.0f}%"


def _x(v) -> str:
    return "—" if v is None else f"{v:.2f}×"


# --- charts -----------------------------------------------------------------------------------
def _bars(ax, names, meds, lows, highs, title, ylabel):
    xs = range(len(names))
    err = [[m - lo if m is not None else 0 for m, lo in zip(meds, lows)],
           [hi - m if m is not None else 0 for m, hi in zip(meds, highs)]]
    ax.bar(xs, [m or 0 for m in meds], yerr=err, capsize=3,
           color=["#c44" if n.startswith("epollmux") else "#999" if n in REFERENCES else "#48a" for n in names])
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _series(rows, key_fn):
    meds, lows, highs = [], [], []
    for row in rows:
        s = key_fn(row)
        meds.append(s["median"] if s else None)
        lows.append(s["min"] if s else 0)
        highs.append(s["max"] if s else 0)
    return meds, lows, highs
