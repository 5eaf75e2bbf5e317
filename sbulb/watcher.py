"""Watch a config file for changes, the way files really get changed.

Editors rarely write a file in place: many write a new file and rename it
over the old one, which a watch on the file itself would miss. Config files
are also often symlinks (configuration management, Kubernetes ConfigMaps,
which swap a symlinked directory). So the directories of the path and of
its resolved target are watched, and any completed change in them (a file
closed after writing, created, renamed or deleted) makes the watcher look
at the file again: on_change() is called when what the path resolves to, or
its content, differs from last time. A file still being written ("modified"
without "closed") is not looked at, so a half-written file is not applied.

A watched directory may itself be removed and created again, or replaced
(renamed away, a new one renamed in): configuration tools do that. inotify
then watches nothing that matters any more, so the watcher checks its
directories every POLL_INTERVAL (and on every event): a directory that is
gone or is not the one watched is logged once (config.waiting), polled for
until it is back, watched again (config.watching_resumed), and the file, if
it exists, reported as changed.

Everything (events, polls, watches added and removed, on_change()) happens
in the watcher's own thread: watchdog's threads only queue the events.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from sbulb.config import MAX_FILE_SIZE

log = logging.getLogger(__name__)

# Event types that end a change. Not "modified" (a write in progress), nor
# "opened" / "closed_no_write" (reads, sbulb's own included).
_COMPLETED = {"created", "moved", "deleted", "closed"}

POLL_INTERVAL = 0.5  # seconds between checks that the watched directories are still there
# How long to let a watch whose directory is gone stop by itself (inotify tells
# it, watchdog stops it) before stopping it: stopping it twice at once is
# unsafe. Above watchdog's 0.5 s hold on a pending "moved from" event.
_SELF_STOP_WAIT = 0.6

Signature = tuple[str, bytes] | None  # (resolved path, content digest), None: missing
Identity = tuple[int, int]  # a directory's (st_dev, st_ino)


def signature(path: Path) -> Signature:
    """What the path resolves to and a digest of its content (at most what
    read_file() reads: a larger file is rejected anyway)."""
    try:
        resolved = os.path.realpath(path)
        digest = hashlib.sha256()
        left = MAX_FILE_SIZE + 1
        with open(resolved, "rb") as f:
            while left > 0 and (chunk := f.read(min(left, 65536))):
                digest.update(chunk)
                left -= len(chunk)
        return resolved, digest.digest()
    except OSError:
        return None


def _identity(directory: str) -> Identity | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


class _Handler(FileSystemEventHandler):
    def __init__(self, on_event: Callable[[FileSystemEvent], None]) -> None:
        self._on_event = on_event

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _COMPLETED:
            self._on_event(event)


@dataclass
class _Watch:
    watch: ObservedWatch
    identity: Identity


_STOP = object()


class ConfigWatcher:
    """Calls on_change() (from the watcher's thread) when `path` changed."""

    def __init__(self, path: Path, on_change: Callable[[], None],
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.path = path.absolute()
        self._on_change = on_change
        self._poll_interval = poll_interval
        self._signature = signature(self.path)
        self._events: queue.Queue[object] = queue.Queue()
        self._handler = _Handler(self._events.put)
        self._observer: Observer | None = None
        self._thread: threading.Thread | None = None
        self._watches: dict[str, _Watch] = {}
        self._waiting: set[str] = set()  # needed directories not watched (logged once)
        self._lock = threading.Lock()

    def _directories(self) -> set[str]:
        return {str(self.path.parent), os.path.dirname(os.path.realpath(self.path))}

    def _emitter(self, watch: ObservedWatch):  # type: ignore[no-untyped-def]
        assert self._observer is not None
        return next((e for e in list(self._observer.emitters) if e.watch == watch), None)

    def _drop(self, directory: str, stopped: bool) -> None:
        """Stop watching a directory (its emitter already stopped by itself
        if `stopped`)."""
        assert self._observer is not None
        entry = self._watches.pop(directory)
        emitter = self._emitter(entry.watch)
        if stopped and emitter is not None:
            emitter.join(timeout=1)
        try:
            self._observer.unschedule(entry.watch)
        except KeyError:
            pass

    def _lost(self, directory: str, reason: str) -> None:
        if directory not in self._waiting:
            self._waiting.add(directory)
            log.warning("config.waiting file=%s directory=%s reason=%s; watching for it to "
                        "come back", self.path, directory, reason)

    def _sync(self, raise_errors: bool = False) -> bool:
        """Make the watches match the directories that matter now. Returns
        whether a lost directory is watched again."""
        if self._observer is None:
            return False
        needed = self._directories()
        self._waiting &= needed
        for directory, entry in list(self._watches.items()):
            emitter = self._emitter(entry.watch)
            stopped = emitter is None or emitter.stopped_event.is_set()  # deleted
            if directory not in needed:
                if stopped:  # forget it; a live one stays (the symlink may come back)
                    self._drop(directory, stopped)
                continue
            now = _identity(directory)
            if not stopped and now == entry.identity:
                continue
            if not stopped:  # gone or replaced: let inotify's own stop come first
                stopped = emitter.stopped_event.wait(_SELF_STOP_WAIT)
            self._drop(directory, stopped)
            self._lost(directory, "directory removed" if now is None else "directory replaced")
        resumed = False
        for directory in sorted(needed - self._watches.keys()):
            identity = _identity(directory)  # before the watch: a later change shows
            if identity is None:
                self._lost(directory, "directory missing")
                continue
            try:
                watch = self._observer.schedule(self._handler, directory, recursive=False)
            except (FileNotFoundError, NotADirectoryError):
                self._lost(directory, "directory removed")
                continue
            except OSError as e:
                if raise_errors:
                    raise
                if directory not in self._waiting:
                    self._waiting.add(directory)
                    log.error("config.watch_failed file=%s directory=%s reason=%s; retrying",
                              self.path, directory, e.strerror or e)
                continue
            self._watches[directory] = _Watch(watch, identity)
            log.debug("config.watching directory=%s", directory)
            if directory in self._waiting:
                self._waiting.discard(directory)
                resumed = True
                log.info("config.watching_resumed file=%s directory=%s", self.path, directory)
        return resumed

    def start(self) -> None:
        """Start watching; raises OSError (e.g. inotify limits reached)."""
        observer = Observer()
        observer.daemon = True
        observer.start()
        self._observer = observer
        try:
            with self._lock:
                self._sync(raise_errors=True)
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._run, name="sbulb-config-watcher",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                event = self._events.get(timeout=self._poll_interval)
            except queue.Empty:
                event = None
            if event is _STOP:
                return
            try:
                if event is None:
                    self.poll()
                else:
                    self._on_event(event)  # type: ignore[arg-type]
            except Exception:  # keep watching whatever happened
                log.exception("config.watcher_error file=%s", self.path)

    def poll(self) -> None:
        """Check the watched directories (every POLL_INTERVAL)."""
        self._check(None)

    def _on_event(self, event: FileSystemEvent) -> None:
        self._check(event)

    def _check(self, event: FileSystemEvent | None) -> None:
        with self._lock:
            resumed = self._sync()  # the symlink may point somewhere new, a directory be back
            current = signature(self.path)
            changed = current != self._signature or (resumed and current is not None)
            self._signature = current
        if not changed:
            return
        if event is None:
            log.debug("config.changed event=watching_resumed path=%s", self.path)
        else:
            log.debug("config.changed event=%s path=%s", event.event_type, event.src_path)
        self._on_change()

    def stop(self) -> None:
        if self._thread is not None:
            self._events.put(_STOP)
            self._thread.join(timeout=5)
            self._thread = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self._watches.clear()
        self._waiting.clear()
