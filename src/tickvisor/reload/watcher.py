"""ConfigWatcher: notice when the config or a symbols file is saved, and reload once.

Folders are watched, not files. Most editors save by writing a temporary
file and renaming it over the original; a watch on the file itself follows
the old inode and never sees the new contents. A watch on the folder sees
the rename, and events are filtered down to the files that matter: the
config file, the symbols files it names (also through a symlink to them),
and symlinks swapped into place (the way Kubernetes updates a mounted
ConfigMap).

watchdog's native observer (inotify on Linux) is tried first. When it cannot
start, typically because the inotify watch or instance limit is reached, the
watcher falls back to watchdog's polling observer, and the
``config.watching`` line says which one runs.

One save makes several events (create, modify, move, close); they are
debounced on a worker thread so a save is one reload. Debouncing uses real
time, like the file system it watches. The observer's thread only records
that something happened; the reload itself, with its bounded calls into the
tree, runs on the worker thread, and no lock is held while it does.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from tickvisor.logs import get_logger
from tickvisor.reload.reloader import Reloader, ReloadResult

__all__ = ["ConfigWatcher"]

log = get_logger("tickvisor.reload")

#: Events that say nothing about new contents.
_IGNORED = frozenset({"opened", "closed_no_write"})
ObserverFactory = Callable[[], BaseObserver]


class ConfigWatcher:
    """Watches the files of ``reloader`` and calls :meth:`Reloader.reload_now` after a save.

    ``debounce_seconds`` of quiet after the last event trigger the reload.
    ``polling`` skips the native observer; ``poll_interval`` is how often
    the polling observer looks. ``observer_factory`` replaces the native
    observer (tests use it to simulate exhausted inotify limits).
    """

    def __init__(
        self,
        reloader: Reloader,
        *,
        debounce_seconds: float = 0.3,
        polling: bool = False,
        poll_interval: float = 1.0,
        observer_factory: ObserverFactory | None = None,
    ) -> None:
        self.reloader = reloader
        self.debounce_seconds = debounce_seconds
        self.poll_interval = poll_interval
        self._polling = polling
        self._native: ObserverFactory = observer_factory or Observer
        self._observer: BaseObserver | None = None
        self._folders: frozenset[str] = frozenset()
        self._targets: frozenset[str] = frozenset()
        self._handler = _Handler(self)
        self._wake = threading.Condition()
        self._due: float | None = None  # time.monotonic() at which to reload
        self._stopping = False
        self._worker = threading.Thread(
            target=self._run, name="tickvisor-config-watcher", daemon=True
        )
        self.last_result: ReloadResult | None = None
        self.reloads = 0

    @property
    def observer_kind(self) -> str:
        """``native`` (inotify, FSEvents, ...) or ``polling``."""
        return "polling" if isinstance(self._observer, PollingObserver) else "native"

    def start(self) -> ConfigWatcher:
        self._watch(self.reloader.watched_files())
        self._worker.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; a reload under way gets ``timeout`` to finish (its calls are bounded)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(timeout)
        self._stop_observer(timeout)
        log.info("config.watch_stopped", file=str(self.reloader.path))

    def request_reload(self) -> None:
        """Reload soon, whatever the files say (for SIGHUP, or an operator)."""
        self._poke()

    # --- the observer's side: record and return ------------------------------------

    def _relevant(self, event: FileSystemEvent) -> bool:
        if event.event_type in _IGNORED:
            return False
        paths = [os.fsdecode(p) for p in (event.src_path, event.dest_path) if p]
        targets = self._targets  # one read: replaced whole, never mutated
        if any(os.path.abspath(p) in targets for p in paths):
            return True
        # A symlink swapped into place (``..data`` in a Kubernetes ConfigMap
        # mount) changes what the watched path points at without touching it.
        return event.event_type in ("created", "moved") and any(os.path.islink(p) for p in paths)

    def _poke(self) -> None:
        with self._wake:
            self._due = time.monotonic() + self.debounce_seconds
            self._wake.notify_all()

    # --- the worker's side: wait for quiet, then reload ------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._due is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                assert self._due is not None
                remaining = self._due - time.monotonic()
                if remaining > 0:
                    self._wake.wait(remaining)  # a new event moves the deadline on
                    continue
                self._due = None
            self._reload()

    def _reload(self) -> None:
        try:
            self.last_result = self.reloader.reload_now()
        except Exception:  # a bug must not end the watching
            log.exception("config.reload_failed", file=str(self.reloader.path))
            return
        finally:
            self.reloads += 1
        with contextlib.suppress(Exception):
            files = self.reloader.watched_files()
            if _folders_of(files) != self._folders and not self._stopping:
                # A symbols file in a new folder: watch the new set. Events in
                # between are covered by the reload just done and the poke below.
                self._stop_observer(5.0)
                self._watch(files)
                self._poke()
            else:
                self._targets = _targets_of(files)

    # --- observers ----------------------------------------------------------------

    def _watch(self, files: Iterable[Path]) -> None:
        files = list(files)
        self._targets = _targets_of(files)
        self._folders = _folders_of(files)
        if not self._polling:
            try:
                self._observer = self._start(self._native())
            except OSError as exc:
                log.warning(
                    "config.watch_fallback",
                    error=f"{type(exc).__name__}: {exc}",
                    observer="polling",
                )
            else:
                self._announce()
                return
        self._observer = self._start(PollingObserver(timeout=self.poll_interval))
        self._announce()

    def _start(self, observer: BaseObserver) -> BaseObserver:
        try:
            for folder in sorted(self._folders):
                observer.schedule(self._handler, folder, recursive=False)
            observer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                observer.stop()
            raise
        return observer

    def _announce(self) -> None:
        log.info(
            "config.watching",
            file=str(self.reloader.path),
            folders=sorted(self._folders),
            observer=self.observer_kind,
        )

    def _stop_observer(self, timeout: float) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        observer.stop()
        if observer.is_alive() and observer is not threading.current_thread():
            observer.join(timeout)


class _Handler(FileSystemEventHandler):
    """Runs on the observer's thread: decides relevance and pokes the worker, nothing more."""

    def __init__(self, watcher: ConfigWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self._watcher._relevant(event):
            self._watcher._poke()


def _targets_of(files: Iterable[Path]) -> frozenset[str]:
    """Each file by its absolute path and, if that is a symlink, by what it points at."""
    found: set[str] = set()
    for file in files:
        found.add(os.path.abspath(file))
        found.add(os.path.realpath(file))
    return frozenset(found)


def _folders_of(files: Iterable[Path]) -> frozenset[str]:
    return frozenset(os.path.dirname(path) for path in _targets_of(files))
