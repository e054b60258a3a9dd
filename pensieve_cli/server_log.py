"""The background server's log, kept bounded while the server runs (``pensieve serve --log-file``).

``pensieve start`` runs ``serve --log-file server.log``: logging goes through a size-capped
:class:`RotatingFileHandler` (``server.log`` → ``server.log.1`` … ``.keep``), and the process's own
file descriptors 1 and 2 are pointed at the current file too, so raw output that bypasses logging
(a native library's messages, a crash traceback from ``faulthandler`` or the interpreter) lands in
the same file ``pensieve logs`` shows. After each rotation the descriptors follow the new file, and
a watchdog thread rotates when raw output alone has filled it.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import threading
from pathlib import Path

WATCH_INTERVAL_S = 30.0


class ServerLogHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file that also receives the process's stdout and stderr (``capture_output``)."""

    def __init__(self, path: Path, max_bytes: int, keep: int, capture_output: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, maxBytes=max_bytes, backupCount=keep, encoding="utf-8")
        self.capture_output = capture_output
        self._redirect()

    def _redirect(self) -> None:
        """Point fds 1 and 2 at the current file (they share its O_APPEND open file)."""
        if not self.capture_output or self.stream is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        fd = self.stream.fileno()
        for target in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(fd, target)

    def doRollover(self) -> None:  # noqa: N802 - logging's naming
        super().doRollover()
        self._redirect()

    def rotate_if_full(self) -> bool:
        """Rotate when the file has reached the cap between log records (raw output fills it too)."""
        self.acquire()
        try:
            try:
                size = os.stat(self.baseFilename).st_size
            except OSError:
                return False
            if self.maxBytes <= 0 or size < self.maxBytes:
                return False
            self.doRollover()
            return True
        finally:
            self.release()

    def watch(self, interval: float = WATCH_INTERVAL_S) -> threading.Thread:
        """Check the size every ``interval`` seconds from a daemon thread, for the server's lifetime."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                with contextlib.suppress(Exception):  # a log that cannot rotate must not stop the server
                    self.rotate_if_full()

        thread = threading.Thread(target=loop, name="pensieve-log-rotation", daemon=True)
        thread.start()
        self._watch_stop = stop
        return thread

    def close(self) -> None:
        stop = getattr(self, "_watch_stop", None)
        if stop is not None:
            stop.set()
        super().close()
