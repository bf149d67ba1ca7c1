"""Logging as the journal sees it: under systemd (JOURNAL_STREAM/INVOCATION_ID) every stderr line
starts with its sd-daemon priority and a multi-line record stays one line; `log_target = syslog` with
nothing on the syslog socket falls back to stderr with one warning, not a traceback per line."""

from __future__ import annotations

import io
import logging
import logging.handlers
import re
import signal

import pytest

from conftest import connect, free_port
from epollmux.observe import logsetup
from svhelpers import Proc, TaggedBackend, procs, config  # noqa: F401  (procs is a fixture)

pytestmark = pytest.mark.timeout(60)

JOURNAL_ENV = {"JOURNAL_STREAM": "8:12345", "INVOCATION_ID": "0123456789abcdef0123456789abcdef"}


@pytest.fixture
def backend():
    b = TaggedBackend(b"A")
    yield b
    b.close()


def test_daemon_under_systemd_writes_priorities_one_line_per_record(tmp_path, procs, backend):
    port = free_port()
    text = config(port, backend.port, workers=1)
    d = Proc(tmp_path, text, env=JOURNAL_ENV)
    procs.append(d)
    d.wait_log("ready: ")
    with connect(port) as client:
        assert client.recv(1) == b"A"
    d.wait_log("epollmux.access:")
    d.signal(signal.SIGUSR1)
    d.wait_log("show stat:")
    d.write_config(text.replace("[routes]", "[routes]\n  colour = red"))
    d.signal(signal.SIGHUP)
    d.wait_log("reload refused (")
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    lines = d.log_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines[:10]
    assert any(line.startswith("<3>ERROR epollmux.supervisor: reload refused") for line in lines)
    assert any(line.startswith("<6>INFO epollmux.supervisor: ready: ") for line in lines)
    assert any(line.startswith("<6>INFO epollmux.access: ") for line in lines)
    stat = [line for line in lines if "show stat:" in line]
    assert len(stat) == 1 and " | " in stat[0] and "show conns:" in stat[0], stat


def test_multi_line_record_and_traceback_stay_one_line(monkeypatch):
    for key, value in JOURNAL_ENV.items():
        monkeypatch.setenv(key, value)
    handler = logsetup.setup("info")
    out = io.StringIO()
    handler.setStream(out)
    log = logging.getLogger("epollmux.test")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed:\nsecond line")
    log.warning("careful")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("<3>ERROR epollmux.test: failed: | second line | Traceback") and "ValueError: boom" in lines[0]
    assert lines[1] == "<4>WARNING epollmux.test: careful"
    logsetup.setup("info")


def test_plain_stderr_has_no_priority_prefix(monkeypatch):
    for key in JOURNAL_ENV:
        monkeypatch.delenv(key, raising=False)
    handler = logsetup.setup("info")
    out = io.StringIO()
    handler.setStream(out)
    logging.getLogger("epollmux.test").error("bad")
    assert re.match(r"\d{4}-\d\d-\d\dT\S+ epollmux\[\d+\] ERROR epollmux.test: bad$", out.getvalue().strip())


def test_syslog_without_a_socket_falls_back_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    handler = logsetup.setup("info", "syslog", syslog_path=str(tmp_path / "no-log"))
    try:
        assert isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.handlers.SysLogHandler)
        logging.getLogger("epollmux.test").info("after")
        err = capsys.readouterr().err
        assert err.count("WARNING epollmux.log: log_target = syslog: nothing answers on") == 1, err
        assert "after" in err and "Logging error" not in err
    finally:
        logsetup.setup("info")


def test_daemon_with_syslog_target_and_no_dev_log(tmp_path, procs, backend):
    if logsetup.syslog_available():
        pytest.skip("/dev/log answers on this host: the fallback is covered by the unit test")
    port = free_port()
    d = Proc(tmp_path, config(port, backend.port, workers=1, extra_global="log_target = syslog"))
    procs.append(d)
    d.wait_log("ready: ")
    with connect(port) as client:
        assert client.recv(1) == b"A"
    d.wait_log("epollmux.access:")
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    text = d.log_text()
    assert text.count("nothing answers on /dev/log") == 1 and "Logging error" not in text, text[-3000:]
