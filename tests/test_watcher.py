"""The config-file watcher, on real directories with inotify (watchdog)."""

from __future__ import annotations

import os
import queue
from pathlib import Path
from typing import Iterator

import pytest
from watchdog.events import FileClosedEvent, FileModifiedEvent

from sbulb.watcher import ConfigWatcher, _Handler

TIMEOUT = 5.0


class Watched:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.changes: queue.Queue[int] = queue.Queue()
        self.watcher = ConfigWatcher(path, lambda: self.changes.put(1))

    def changed(self) -> None:
        self.changes.get(timeout=TIMEOUT)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    path = tmp_path / "sbulb.conf"
    path.write_text("[Real Servers]\n10.0.0.2\n")
    w = Watched(path)
    w.watcher.start()
    try:
        yield w
    finally:
        w.watcher.stop()


def test_change_in_place(watched: Watched) -> None:
    with watched.path.open("a") as f:
        f.write("10.0.0.3\n")
    watched.changed()


def test_change_through_rename(watched: Watched) -> None:
    """How editors and config management save: write aside, rename over."""
    new = watched.path.with_name(".sbulb.conf.tmp")
    new.write_text("[Real Servers]\n10.0.0.4\n")
    os.rename(new, watched.path)
    watched.changed()
    assert watched.changes.empty(), "writing the temporary file is not a change of ours"


def test_deleted_and_recreated(watched: Watched) -> None:
    watched.path.unlink()
    watched.changed()
    watched.path.write_text("[Real Servers]\n10.0.0.5\n")
    watched.changed()


def test_symlinked_file_edited_at_its_target(tmp_path: Path) -> None:
    target_dir = tmp_path / "srv"
    target_dir.mkdir()
    target = target_dir / "real.conf"
    target.write_text("[Real Servers]\n10.0.0.2\n")
    link = tmp_path / "etc" / "sbulb.conf"
    link.parent.mkdir()
    link.symlink_to(target)
    w = Watched(link)
    w.watcher.start()
    try:
        target.write_text("[Real Servers]\n10.0.0.3\n")
        w.changed()
    finally:
        w.watcher.stop()


def test_kubernetes_style_symlinked_directory_swap(tmp_path: Path) -> None:
    """A ConfigMap volume: sbulb.conf -> ..data/sbulb.conf, ..data -> ..v1,
    updated by renaming a new ..data symlink over the old one."""
    for version, server in (("..v1", "10.0.0.2"), ("..v2", "10.0.0.3")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "sbulb.conf").write_text(f"[Real Servers]\n{server}\n")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "sbulb.conf").symlink_to("..data/sbulb.conf")
    w = Watched(tmp_path / "sbulb.conf")
    w.watcher.start()
    try:
        (tmp_path / "..data_tmp").symlink_to("..v2")
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
        w.changed()
    finally:
        w.watcher.stop()


def test_unrelated_events_and_writes_in_progress_are_ignored(tmp_path: Path) -> None:
    """Checked on synthetic events (the watcher is not started), so that no
    timing is involved."""
    path = tmp_path / "sbulb.conf"
    path.write_text("[Real Servers]\n10.0.0.2\n")
    calls: list[int] = []
    watcher = ConfigWatcher(path, lambda: calls.append(1))
    try:
        # another file of the directory: the config did not change
        watcher._on_event(FileClosedEvent(str(tmp_path / "other.conf")))
        assert calls == []
        # the same content written again: nothing to do
        path.write_text("[Real Servers]\n10.0.0.2\n")
        watcher._on_event(FileClosedEvent(str(path)))
        assert calls == []
        # a write in progress is not a completed change
        seen: list[str] = []
        _Handler(lambda e: seen.append(e.event_type)).on_any_event(FileModifiedEvent(str(path)))
        assert seen == []
        path.write_text("[Real Servers]\n10.0.0.3\n")
        watcher._on_event(FileClosedEvent(str(path)))
        assert calls == [1]
    finally:
        watcher.stop()
