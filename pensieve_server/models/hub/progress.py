"""Progress of a pull: snapshots for the caller's display, counted over the whole pull and per file."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pensieve_server.models.hub.planning import PullPlan


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress display: the current file and the whole pull, in bytes."""

    phase: str  # "download" | "verify" | "install" | "done"
    file: str
    file_done: int
    file_size: int
    done: int
    total: int
    files_done: int
    files_total: int


ProgressCallback = Callable[[Progress], None]


class Tracker:
    """Counts bytes for the whole pull and forwards snapshots to the caller's callback."""

    def __init__(self, p: PullPlan, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.total = p.total_bytes
        self.files_total = len(p.files)
        self.done = 0
        self.files_done = 0
        self.file = ""
        self.file_done = 0
        self.file_size = 0
        self.phase = "download"
        self.lock = threading.Lock()

    def emit(self) -> None:
        if self.callback is not None:
            self.callback(Progress(self.phase, self.file, self.file_done, self.file_size, self.done, self.total,
                                   self.files_done, self.files_total))

    def start(self, phase: str, file: str, size: int, done: int = 0) -> None:
        with self.lock:
            self.phase, self.file, self.file_size, self.file_done = phase, file, size, done
            self.done += done
        self.emit()

    def advance(self, n: int) -> None:
        with self.lock:
            self.file_done += n
            self.done += n
        self.emit()

    def finish(self) -> None:
        with self.lock:
            self.done += self.file_size - self.file_done
            self.file_done = self.file_size
            self.files_done += 1
        self.emit()

    def restart(self, phase: str) -> None:
        with self.lock:
            self.phase, self.done, self.files_done, self.file = phase, 0, 0, ""


class Bar:
    """The ``tqdm_class`` handed to ``http_get``: it is only ever constructed, entered and updated."""

    def __init__(self, tracker: Tracker, *args: Any, initial: int = 0, **kwargs: Any) -> None:
        self.tracker = tracker
        if initial != tracker.file_done:  # the server ignored our Range: the file starts over
            tracker.advance(initial - tracker.file_done)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        self.tracker.advance(int(n or 0))

    def close(self) -> None:
        return None
