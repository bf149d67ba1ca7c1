"""Logging as the journal sees it, through the daemon: under systemd (JOURNAL_STREAM/INVOCATION_ID) every
stderr line, access lines included, starts with its sd-daemon priority and a multi-line record (SIGUSR1
stats) stays one line; `log_target = syslog` with no /dev/log falls back to stderr with one warning."""

from __future__ import annotations

import re
import signal

import pytest

from epollmux.observe import logsetup
from support.net import connect, free_port
from support.supervision import TaggedBackend, config

pytestmark = pytest.mark.timeout(60)

JOURNAL_ENV = {"JOURNAL_STREAM": "8:12345", "INVOCATION_ID": "0123456789abcdef0123456789abcdef"}


@pytest.fixture
def backend():
    b = TaggedBackend(b"A")
    yield b
    b.close()


def test_daemon_under_systemd_writes_priorities_one_line_per_record(daemon, backend):
    port = free_port()
    text = config(port, backend.port, workers=1)
    d = daemon().start(text, env=JOURNAL_ENV, ready=True)
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


def test_daemon_with_syslog_target_and_no_dev_log(daemon, backend):
    if logsetup.syslog_available():
        pytest.skip("/dev/log answers on this host: the fallback is covered by the unit test")
    port = free_port()
    d = daemon().start(config(port, backend.port, workers=1, log_target="syslog"), ready=True)
    with connect(port) as client:
        assert client.recv(1) == b"A"
    d.wait_log("epollmux.access:")
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    text = d.log_text()
    assert text.count("nothing answers on /dev/log") == 1 and "Logging error" not in text, text[-3000:]
