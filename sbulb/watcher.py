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
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)

# Event types that end a change. Not "modified" (a write in progress), nor
# "opened" / "closed_no_write" (reads, sbulb's own included).
_COMPLETED = {"created", "moved", "deleted", "closed"}

Signature = tuple[str, bytes] | None  # (resolved path, content digest), None: missing


def signature(path: Path) -> Signature:
    try:
        resolved = os.path.realpath(path)
        with open(resolved, "rb") as f:
            return resolved, hashlib.sha256(f.read()).digest()
    except OSError:
        return None


class _Handler(FileSystemEventHandler):
    def __init__(self, on_event: Callable[[FileSystemEvent], None]) -> None:
        self._on_event = on_event

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _COMPLETED:
            self._on_event(event)


class ConfigWatcher:
    """Calls on_change() (from a watchdog thread) when `path` changed."""

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self.path = path.absolute()
        self._on_change = on_change
        self._signature = signature(self.path)
        self._handler = _Handler(self._on_event)
        self._observer: Observer | None = None
        self._watched: set[str] = set()
        self._lock = threading.Lock()

    def _directories(self) -> set[str]:
        return {str(self.path.parent), os.path.dirname(os.path.realpath(self.path))}

    def _watch(self) -> None:
        if self._observer is None:
            return
        for directory in self._directories() - self._watched:
            if os.path.isdir(directory):
                self._observer.schedule(self._handler, directory, recursive=False)
                self._watched.add(directory)
                log.debug("config.watching directory=%s", directory)

    def start(self) -> None:
        """Start watching; raises OSError (e.g. inotify limits reached)."""
        observer = Observer()
        observer.daemon = True
        self._observer = observer
        self._watch()
        observer.start()

    def _on_event(self, event: FileSystemEvent) -> None:
        with self._lock:
            self._watch()  # the symlink may point somewhere new
            current = signature(self.path)
            if current == self._signature:
                return
            self._signature = current
        log.debug("config.changed event=%s path=%s", event.event_type, event.src_path)
        self._on_change()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
