"""Logging set-up: sbulb's levels, TRACE included."""

from __future__ import annotations

import logging
import sys

TRACE = 5
LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRACE")

logging.addLevelName(TRACE, "TRACE")


def level_number(name: str) -> int:
    """The logging level for one of LEVELS."""
    return TRACE if name == "TRACE" else logging.getLevelName(name)


def setup(level: str) -> None:
    """Log to stderr at `level`; journald adds its own timestamps."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_number(level))
    # watchdog logs every inotify event at DEBUG: with the log file in the
    # config file's directory, each line would cause another one
    logging.getLogger("watchdog").setLevel(max(logging.INFO, level_number(level)))
