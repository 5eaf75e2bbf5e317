"""Logging set-up: sbulb's levels (TRACE included) and its line format.

Every line is logfmt: `ts=... level=... event=... key=value ...`, values
quoted when they need it. sbulb's messages are written as `event key=value
... (prose)`; the formatter turns that into fields: the first word, when it
is an event name (`health.down`), becomes `event=`; what follows a key up to
the next ` key=` is its value; a closing `(prose)` after a one-word value,
prose after a one-word value and a colon or semicolon, and anything before
the first key, become `msg=`. Exceptions go in `exc=`,
on the same line.

Under systemd (stderr is the journal's stream: $JOURNAL_STREAM names its
device and inode), each line starts with the syslog priority, `<3>` for an
error, which journald takes as the entry's PRIORITY (`journalctl -p err`),
and carries no `ts=`: journald stamps every entry itself.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Mapping, Optional, TextIO

TRACE = 5
LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRACE")

logging.addLevelName(TRACE, "TRACE")

# syslog(3) priorities, as journald reads them from a "<N>" line prefix
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
              logging.DEBUG: 7, TRACE: 7}

_EVENT = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")
# a split before every " key=" (a key is a word that an = ends)
_BEFORE_KEY = re.compile(r" +(?=[A-Za-z_][A-Za-z0-9_.]*=)")
_TRAILING_PROSE = re.compile(r"(\S+) +\((.*)\)\s*")
_WORD_THEN_PROSE = re.compile(r"(\S+)[:;] +(.*)", re.DOTALL)
_NEEDS_QUOTES = re.compile(r'[\s"=\\]|[^\x21-\x7e]')


def level_number(name: str) -> int:
    """The logging level for one of LEVELS."""
    return TRACE if name == "TRACE" else logging.getLevelName(name)


def quote(value: str) -> str:
    """A logfmt value: bare when it can be, else in double quotes with \\
    escapes (an empty value is "")."""
    if value and not _NEEDS_QUOTES.search(value):
        return value
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def fields(message: str) -> list[tuple[str, str]]:
    """sbulb's `event key=value ... (prose)` message as logfmt fields."""
    out: list[tuple[str, str]] = []
    prose: list[str] = []
    head, _, rest = message.partition(" ")
    if _EVENT.fullmatch(head.rstrip(":")):  # "event: prose" too
        out.append(("event", head.rstrip(":")))
    else:
        rest = message
    parts = _BEFORE_KEY.split(rest.strip()) if rest.strip() else []
    if parts and not _KEY.match(parts[0]):
        prose.append(parts.pop(0))
    for part in parts:
        key, _, value = part.partition("=")
        trailing = _TRAILING_PROSE.fullmatch(value) or _WORD_THEN_PROSE.fullmatch(value)
        if trailing:
            value = trailing.group(1)
            prose.append(trailing.group(2))
        out.append((key, value))
    if prose:
        out.append(("msg", "; ".join(prose)))
    return out


class LogfmtFormatter(logging.Formatter):
    def __init__(self, timestamps: bool = True, priority_prefix: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, str]] = []
        if self.timestamps:
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            pairs.append(("ts", f"{ts}.{int(record.msecs):03d}Z"))
        pairs.append(("level", record.levelname.lower()))
        pairs.extend(fields(record.getMessage()))
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        line = " ".join(f"{key}={quote(value)}" for key, value in pairs)
        if self.priority_prefix:
            line = f"<{PRIORITIES.get(record.levelno, 6)}>{line}"
        return line


def journal_stream(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether stream is systemd's journal stream ($JOURNAL_STREAM is
    "device:inode" of the stream systemd connected stderr to)."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def setup(level: str, stream: Optional[TextIO] = None) -> None:
    """Log to stderr at `level`: logfmt, for the journal with priorities."""
    stream = stream or sys.stderr
    journal = journal_stream(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(timestamps=not journal, priority_prefix=journal))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number(level))
    # watchdog logs every inotify event at DEBUG: with the log file in the
    # config file's directory, each line would cause another one
    logging.getLogger("watchdog").setLevel(max(logging.INFO, level_number(level)))
