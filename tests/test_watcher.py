"""The config-file watcher, on a real directory with inotify (watchdog)."""

from __future__ import annotations

import os
import queue
from pathlib import Path
from typing import Iterator

import pytest
from watchdog.events import FileModifiedEvent, FileSystemEvent

from sbulb.watcher import ConfigWatcher, _Handler

TIMEOUT = 5.0


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, "queue.Queue[int]"]]:
    path = tmp_path / "sbulb.conf"
    path.write_text("[Real Servers]\n10.0.0.2\n")
    changes: queue.Queue[int] = queue.Queue()
    watcher = ConfigWatcher(path, lambda: changes.put(1))
    watcher.start()
    try:
        yield path, changes
    finally:
        watcher.stop()


def drain(changes: "queue.Queue[int]") -> None:
    while not changes.empty():
        changes.get_nowait()


def test_change_in_place(watched) -> None:
    path, changes = watched
    with path.open("a") as f:
        f.write("10.0.0.3\n")
    changes.get(timeout=TIMEOUT)


def test_change_through_rename(watched) -> None:
    """How editors and config management save: write aside, rename over."""
    path, changes = watched
    new = path.with_name(".sbulb.conf.tmp")
    new.write_text("[Real Servers]\n10.0.0.4\n")
    drain(changes)  # writing the temporary file is not a change of ours
    os.rename(new, path)
    changes.get(timeout=TIMEOUT)


def test_deleted_and_recreated(watched) -> None:
    path, changes = watched
    path.unlink()
    changes.get(timeout=TIMEOUT)
    path.write_text("[Real Servers]\n10.0.0.5\n")
    changes.get(timeout=TIMEOUT)


def test_other_files_and_reads_are_ignored(tmp_path: Path) -> None:
    """Filtered by path and event type (checked on synthetic events, so that
    no timing is involved)."""
    path = tmp_path / "sbulb.conf"
    calls: list[int] = []
    handler = _Handler(path, lambda: calls.append(1))
    handler.on_any_event(FileModifiedEvent(str(tmp_path / "other.conf")))
    opened = FileSystemEvent(str(path))
    opened.event_type = "opened"  # what newer watchdogs report for a read
    handler.on_any_event(opened)
    assert calls == []
    handler.on_any_event(FileModifiedEvent(str(path)))
    assert calls == [1]
