"""The shipped systemd unit lets a stop finish its drain: TimeoutStopSec (after which systemd SIGKILLs
everything, and a killed connection may end with a clean FIN) stays at least MARGIN seconds above
stop_delay + the longest drain_timeout of the example config and of the configspec defaults, and the
README, the man pages and the example say so with the unit's value."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from epollmux import config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "epollmux.service"
EXAMPLE = ROOT / "etc" / "epollmux.conf"
MARGIN = 10.0        # the workers' cut, their exit and the supervisor's own exit, on a loaded host
UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}

pytestmark = pytest.mark.timeout(30)


def stop_timeout() -> float:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str
    unit.read(UNIT)
    value = unit["Service"].get("TimeoutStopSec") or unit["Service"].get("TimeoutSec")
    assert value, "the unit must set TimeoutStopSec (systemd's default, 90 s, is not ours to assume)"
    if value.strip() == "infinity":
        return float("inf")
    total = 0.0
    for number, unit_name in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * UNITS[unit_name]
    return total


def longest_stop(cfg) -> float:
    """stop_delay + the longest drain a stop may take (0 = never: infinite)."""
    drains = [cfg.settings.drain_timeout] + [r.drain_timeout for r in cfg.routes.values()
                                              if r.drain_timeout is not None]
    return cfg.settings.stop_delay + max(float("inf") if d == 0 else d for d in drains)


def test_the_unit_outlasts_the_example_configs_drain():
    cfg = config.load_file(str(EXAMPLE))
    assert longest_stop(cfg) + MARGIN <= stop_timeout(), (longest_stop(cfg), stop_timeout())


def test_the_unit_outlasts_the_default_drain(tmp_path):
    bare = tmp_path / "bare.conf"
    bare.write_text("[listen]\n  [[main]]\n  address = 127.0.0.1:4443\n"
                    "[routes]\n  [[all]]\n  probe = any\n  backend = 127.0.0.1:22\n")
    cfg = config.load_file(str(bare))
    assert longest_stop(cfg) + MARGIN <= stop_timeout(), (longest_stop(cfg), stop_timeout())


def test_the_docs_name_the_units_stop_timeout():
    shipped = f"{stop_timeout():g}"
    readme = (ROOT / "README.md").read_text()
    assert f"TimeoutStopSec={shipped}" in readme
    assert "TimeoutStopSec=infinity" in readme           # what drain_timeout = 0 needs
    for page in ("epollmux.8", "epollmux.conf.5"):
        text = (ROOT / "doc" / page).read_text()
        assert "TimeoutStopSec" in text and f"{shipped} s" in text, page
    assert f"TimeoutStopSec, {shipped}" in EXAMPLE.read_text()


def test_longest_stop_counts_never_and_route_overrides(tmp_path):
    """The check itself: 0 means never (no finite stop timeout is enough), a route's override counts."""
    base = "[routes]\n  [[all]]\n  probe = any\n  backend = 127.0.0.1:22\n"
    for extra, glob, expected in (("", "drain_timeout = 0\n", float("inf")),
                                  ("  drain_timeout = 120\n", "stop_delay = 5\n", 125.0)):
        path = tmp_path / "c.conf"
        path.write_text(f"[global]\n{glob}[listen]\n  [[main]]\n  address = 127.0.0.1:4443\n{base}{extra}")
        assert longest_stop(config.load_file(str(path))) == expected
