"""The config-file watcher, on real directories with inotify (watchdog)."""

from __future__ import annotations

import logging
import os
import queue
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from watchdog.events import FileClosedEvent, FileModifiedEvent

from sbulb import watcher as watcher_module
from sbulb.watcher import ConfigWatcher, _Handler

TIMEOUT = 5.0


class LogWaiter(logging.Handler):
    """The records of a logger, to wait on (with a bound) as they come."""

    def __init__(self, name: str = "sbulb.watcher", level: int = logging.INFO) -> None:
        super().__init__(level)
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue()
        self._level = self.logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._queue.put(record)

    def __enter__(self) -> "LogWaiter":
        self.logger.addHandler(self)
        self.logger.setLevel(min(self.level, self.logger.getEffectiveLevel()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def wait(self, text: str, timeout: float = TIMEOUT) -> logging.LogRecord:
        """The next record (from now) whose message contains text."""
        while True:
            record = self._queue.get(timeout=timeout)
            if text in record.getMessage():
                return record

    def messages(self, text: str) -> list[str]:
        return [r.getMessage() for r in self.records if text in r.getMessage()]


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


def test_directory_removed_and_created_again(tmp_path: Path) -> None:
    """A configuration tool that replaces the directory: watching resumes
    (the log says the file is waited for), and a later save counts."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "sbulb.conf").write_text("[Real Servers]\n10.0.0.2\n")
    w = Watched(etc / "sbulb.conf")
    with LogWaiter() as logs:
        w.watcher.start()
        try:
            shutil.rmtree(etc)
            w.changed()  # the file went with it
            waiting = logs.wait("config.waiting")
            assert waiting.levelname == "WARNING"
            assert f"file={w.path}" in waiting.getMessage()
            assert "reason=directory removed" in waiting.getMessage()
            etc.mkdir()
            resumed = logs.wait("config.watching_resumed")  # found by the poll
            assert resumed.levelname == "INFO" and f"directory={etc}" in resumed.getMessage()
            assert w.changes.empty(), "no file yet: nothing to reload"
            w.path.write_text("[Real Servers]\n10.0.0.5\n")
            w.changed()
            assert len(logs.messages("config.waiting")) == 1
        finally:
            w.watcher.stop()


def test_directory_removed_waits_and_logs_once(tmp_path: Path) -> None:
    """Driven by hand (the watcher's own poll is made rare): however many
    polls find the directory missing, one line; the poll that finds it back
    re-arms the watch and, the file being there, reports a change."""
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "sbulb.conf"
    path.write_text("[Real Servers]\n10.0.0.2\n")
    w = Watched(path)
    w.watcher = ConfigWatcher(path, lambda: w.changes.put(1), poll_interval=3600)
    with LogWaiter() as logs:
        w.watcher.start()
        try:
            shutil.rmtree(etc)
            w.changed()
            logs.wait("config.waiting")  # from the directory's own deletion event
            for _ in range(3):
                w.watcher.poll()
            assert len(logs.messages("config.waiting")) == 1
            assert w.changes.empty()
            etc.mkdir()
            path.write_text("[Real Servers]\n10.0.0.6\n")  # not watched yet
            w.watcher.poll()
            assert len(logs.messages("config.watching_resumed")) == 1
            w.changed()
            path.write_text("[Real Servers]\n10.0.0.7\n")  # watched again
            w.changed()
        finally:
            w.watcher.stop()


def test_directory_replaced_by_renames(tmp_path: Path) -> None:
    """mv etc etc.old; mv etc.new etc: the old watch follows etc.old, so the
    watcher must notice that etc is another directory now."""
    etc, new = tmp_path / "etc", tmp_path / "etc.new"
    etc.mkdir()
    new.mkdir()
    (etc / "sbulb.conf").write_text("[Real Servers]\n10.0.0.2\n")
    w = Watched(etc / "sbulb.conf")
    (new / "sbulb.conf").write_text("[Real Servers]\n10.0.0.3\n")
    with LogWaiter() as logs:
        w.watcher.start()
        try:
            os.rename(etc, tmp_path / "etc.old")
            os.rename(new, etc)
            w.changed()
            logs.wait("config.watching_resumed")
            assert len(logs.messages("config.waiting")) == 1
            w.path.write_text("[Real Servers]\n10.0.0.4\n")
            w.changed()
            # the old directory is not ours any more
            (tmp_path / "etc.old" / "sbulb.conf").write_text("[Real Servers]\n10.0.0.9\n")
            w.watcher.poll()
            assert w.changes.empty()
        finally:
            w.watcher.stop()


def test_missing_directory_at_start_is_waited_for(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    w = Watched(etc / "sbulb.conf")
    with LogWaiter() as logs:
        w.watcher.start()
        try:
            assert "reason=directory missing" in logs.wait("config.waiting").getMessage()
            etc.mkdir()
            logs.wait("config.watching_resumed")
            w.path.write_text("[Real Servers]\n10.0.0.2\n")
            w.changed()
        finally:
            w.watcher.stop()


def test_the_signature_reads_a_bounded_prefix() -> None:
    """/dev/zero never ends: the digest stops after the size cap."""
    assert watcher_module.signature(Path("/dev/zero")) is not None
