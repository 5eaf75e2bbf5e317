"""Watch a config file for changes, the way editors save files.

Editors rarely write a file in place: many write a new file and rename it
over the old one, which a watch on the file itself would miss. So the
directory is watched and events are filtered by path: written in place,
created, renamed into place, or deleted all count as "may have changed".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)

# Event types that can change the file's content. Opening or reading the file
# (which sbulb itself does on each reload) must not trigger a reload.
_CHANGES = {"created", "modified", "moved", "deleted", "closed"}


class _Handler(FileSystemEventHandler):
    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self._path = str(path)
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return
        paths = {event.src_path, getattr(event, "dest_path", None)}
        if self._path in paths:
            log.debug("config.event type=%s path=%s", event.event_type, self._path)
            self._on_change()


class ConfigWatcher:
    """Calls on_change() (from a watchdog thread) when `path` may have changed."""

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self.path = path.absolute()
        self._handler = _Handler(self.path, on_change)
        self._observer: Observer | None = None

    def start(self) -> None:
        observer = Observer()
        observer.daemon = True
        observer.schedule(self._handler, str(self.path.parent), recursive=False)
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
