"""The log line format: logfmt on a terminal and in files, syslog
priorities and no timestamps on systemd's journal stream (no root)."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import pytest

from sbulb import log

# a logfmt line: key=bare or key="quoted with \" escapes", separated by spaces
_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^\s"=]*)(?: |$)')


def parse(line: str) -> list[tuple[str, str]]:
    """A strict logfmt parser: every character of the line is in a pair."""
    pairs, pos = [], 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        assert m, f"not logfmt at {pos}: {line[pos:]!r} in {line!r}"
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda e: {"n": "\n", "t": "\t", "r": "\r"}.get(
                e.group(1), e.group(1)), value[1:-1])
        pairs.append((m.group(1), value))
        pos = m.end()
    return pairs


def emit(level: int, message: str, *args: object, journal: bool = False,
         exc: bool = False) -> str:
    formatter = log.LogfmtFormatter(timestamps=not journal, priority_prefix=journal)
    record = logging.LogRecord("sbulb", level, __file__, 1, message, args, None)
    if exc:
        try:
            raise ValueError('bad "thing"\nsecond line')
        except ValueError:
            import sys
            record.exc_info = sys.exc_info()
    return formatter.format(record)


def test_an_event_and_its_fields() -> None:
    line = emit(logging.WARNING, "health.down service=%s server=%s reason=%s",
                "coap", "10.0.0.2", "timeout")
    pairs = parse(line)
    assert [k for k, _ in pairs] == ["ts", "level", "event", "service", "server", "reason"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", pairs[0][1])
    assert pairs[1:] == [("level", "warning"), ("event", "health.down"), ("service", "coap"),
                         ("server", "10.0.0.2"), ("reason", "timeout")]


def test_values_that_need_quotes_are_quoted_and_round_trip() -> None:
    reason = 'file "/etc/a b.conf": key = value\\ wrong'
    line = emit(logging.ERROR, "config.rejected file=%s reason=%s", "/etc/a b.conf", reason)
    assert dict(parse(line)) == {"ts": dict(parse(line))["ts"], "level": "error",
                                 "event": "config.rejected", "file": "/etc/a b.conf",
                                 "reason": reason}
    assert 'file="/etc/a b.conf"' in line


@pytest.mark.parametrize("message, expected", [
    ("health.all_down service=coap: every real server is down; new clients are dropped",
     [("event", "health.all_down"), ("service", "coap"),
      ("msg", "every real server is down; new clients are dropped")]),
    ("pin.reused path=/sys/fs/bpf/x (associations kept)",
     [("event", "pin.reused"), ("path", "/sys/fs/bpf/x"), ("msg", "associations kept")]),
    ("metrics.failed: the metrics endpoint has stopped",
     [("event", "metrics.failed"), ("msg", "the metrics endpoint has stopped")]),
    ("health: probe of coap/10.0.0.2: [Errno 32] Broken pipe",
     [("msg", "health: probe of coap/10.0.0.2: [Errno 32] Broken pipe")]),
    ("start.ready interfaces=eth0,eth1 forward=fib services=3",
     [("event", "start.ready"), ("interfaces", "eth0,eth1"), ("forward", "fib"),
      ("services", "3")]),
    ("server.disabled server=2001:db8::2 services=a,b by=sbulbctl",
     [("event", "server.disabled"), ("server", "2001:db8::2"), ("services", "a,b"),
      ("by", "sbulbctl")]),
])
def test_prose_becomes_msg(message: str, expected: list[tuple[str, str]]) -> None:
    assert log.fields(message) == expected
    assert parse(emit(logging.INFO, message))[2:] == expected


def test_an_exception_stays_on_its_line() -> None:
    line = emit(logging.ERROR, "metrics.failed: it stopped", exc=True)
    assert "\n" not in line
    exc = dict(parse(line))["exc"]
    assert exc.startswith("Traceback") and 'ValueError: bad "thing"\nsecond line' in exc


@pytest.mark.parametrize("level, priority", [(logging.CRITICAL, 2), (logging.ERROR, 3),
                                             (logging.WARNING, 4), (logging.INFO, 6),
                                             (logging.DEBUG, 7), (log.TRACE, 7)])
def test_journal_lines_carry_priority_and_no_timestamp(level: int, priority: int) -> None:
    line = emit(level, "config.applied trigger=signal", journal=True)
    assert line.startswith(f"<{priority}>")
    pairs = parse(line[len(f"<{priority}>"):])
    assert "ts" not in dict(pairs) and dict(pairs)["event"] == "config.applied"


def test_the_journal_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with open(path, "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert log.journal_stream(stream, env)
        assert not log.journal_stream(other, env)  # another file: a redirection
        assert not log.journal_stream(stream, {})
        assert not log.journal_stream(stream, {"JOURNAL_STREAM": "garbage"})
        assert not log.journal_stream(io.StringIO(), env)  # no descriptor


def test_setup_picks_the_format(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "stderr"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with open(path, "w") as stream:
            st = os.fstat(stream.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
            log.setup("INFO", stream)
            logging.getLogger("sbulb.test").error("start.failed reason=%s", "no bpffs")
            monkeypatch.delenv("JOURNAL_STREAM")
            log.setup("INFO", stream)
            logging.getLogger("sbulb.test").info("start.ready services=1")
            logging.getLogger("sbulb.test").debug("hidden.event at=info")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    first, second = path.read_text().splitlines()
    assert first == '<3>level=error event=start.failed reason="no bpffs"'
    assert second.startswith("ts=") and second.endswith("level=info event=start.ready services=1")
