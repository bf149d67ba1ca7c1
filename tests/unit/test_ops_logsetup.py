"""logsetup in-process: sd-daemon priority prefixes and one line per record under systemd, none on a plain
stderr, and the stderr fallback (one warning) for `log_target = syslog` when nothing answers on the socket."""

from __future__ import annotations

import io
import logging
import logging.handlers
import re

from epollmux.observe import logsetup

JOURNAL_ENV = {"JOURNAL_STREAM": "8:12345", "INVOCATION_ID": "0123456789abcdef0123456789abcdef"}


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
