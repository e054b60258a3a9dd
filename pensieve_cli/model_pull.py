"""``pensieve models pull``: download a model from the Hugging Face Hub, showing progress, then say what next.

Progress goes to stderr so stdout keeps only the result: bars redrawn in place on a terminal, a plain
line every few seconds otherwise (logs, CI), nothing with ``-q``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import TextIO

from pensieve_cli import ui
from pensieve_cli.errors import ExitStatus
from pensieve_server.models import hub
from pensieve_server.models.hub import Progress, PullPlan
from pensieve_server.models.store import ModelStore
from pensieve_server.settings import Paths
from pensieve_server.units import format_size

PLAIN_INTERVAL = 10.0  # seconds between progress lines when not on a terminal
TTY_INTERVAL = 0.1  # seconds between redraws on a terminal


def _percent(done: int, total: int) -> int:
    return 100 if total <= 0 else min(100, int(done * 100 / total))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressView:
    """Renders :class:`Progress` snapshots: two bars (file, total) on a TTY, periodic lines elsewhere."""

    def __init__(self, stream: TextIO, tty: bool, interval: float | None = None) -> None:
        self.stream = stream
        self.tty = tty
        self.interval = interval if interval is not None else (TTY_INTERVAL if tty else PLAIN_INTERVAL)
        self.last = 0.0
        self.drawn = False
        self.phase = ""
        self.file = ""
        self.files_done = 0
        self.started = time.monotonic()
        self.start_done = 0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.phase != self.phase:
            self._phase_changed(p, now)
        finished = p.phase == "download" and p.files_done > self.files_done
        if finished:
            self._file_finished(p)
        self.files_done = p.files_done
        new_file = p.file != self.file
        self.file = p.file
        if finished or p.phase in ("install", "done"):
            return
        if self.tty and (new_file or now - self.last >= self.interval or p.file_done >= p.file_size):
            self._draw(p, now)
        elif not self.tty and now - self.last >= self.interval and p.file_done < p.file_size:
            self._line(f"  {p.file}: {_percent(p.file_done, p.file_size)}% of {format_size(p.file_size)}, "
                       f"total {_percent(p.done, p.total)}% of {format_size(p.total)}")
            self.last = now

    def _phase_changed(self, p: Progress, now: float) -> None:
        self._clear()
        self.phase, self.files_done, self.last = p.phase, 0, now
        if p.phase == "download":
            self.started, self.start_done = now, p.done
        elif p.phase == "verify":
            self._line(f"Verifying {p.files_total} file{'s' if p.files_total != 1 else ''}")
        elif p.phase == "install":
            self._line(f"Installing {p.file}")

    def _file_finished(self, p: Progress) -> None:
        self._clear()
        self._line(f"  {ui.symbols(self.stream).ok} {p.file} ({format_size(p.file_size)})  "
                   f"[{p.files_done}/{p.files_total}, {_percent(p.done, p.total)}%]")

    def _bar(self, done: int, total: int, width: int) -> str:
        filled = width if total <= 0 else min(width, int(width * done / total))
        return "[" + "#" * filled + "-" * (width - filled) + "]"

    def _draw(self, p: Progress, now: float) -> None:
        columns = shutil.get_terminal_size((80, 24)).columns
        width = max(10, min(40, columns - 76))  # what is left of the line once names, sizes and speed fit
        label = "verifying" if p.phase == "verify" else "total"
        name = p.file if len(p.file) <= 24 else "..." + p.file[-21:]
        first = (f"  {name:<24} {self._bar(p.file_done, p.file_size, width)} "
                 f"{_percent(p.file_done, p.file_size):>3}% {format_size(p.file_done)}/{format_size(p.file_size)}")
        second = (f"  {label:<24} {self._bar(p.done, p.total, width)} {_percent(p.done, p.total):>3}% "
                  f"{format_size(p.done)}/{format_size(p.total)}")
        elapsed = now - self.started
        fetched = p.done - self.start_done
        if p.phase == "download" and elapsed > 1 and fetched > 0:
            rate = fetched / elapsed
            second += f"  {format_size(int(rate))}/s  ETA {_duration((p.total - p.done) / rate)}"
        prefix = "\r\x1b[1A\x1b[2K" if self.drawn else ""
        self.stream.write(f"{prefix}{first[:columns - 1]}\n\x1b[2K{second[:columns - 1]}")
        self.stream.flush()
        self.drawn, self.last = True, now

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[2K\x1b[1A\x1b[2K")
            self.stream.flush()
            self.drawn = False

    def _line(self, text: str) -> None:
        self._clear()
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        self._clear()


def _quiet_library_logs() -> None:
    """huggingface_hub warns on every retry; our progress and error lines say it better."""
    try:
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _describe(plan: PullPlan) -> str:
    files = f"{len(plan.files)} file{'s' if len(plan.files) != 1 else ''}"
    text = (f"Pulling {plan.repo}@{plan.commit[:12]} as {plan.name!r} ({plan.format.upper()}, {files}, "
            f"{format_size(plan.total_bytes)})")
    have = plan.have_bytes
    if have:
        text += f"; {format_size(have)} already downloaded, resuming"
    return text


def run(args: argparse.Namespace) -> int:
    """Pull ``args.spec`` (alias or owner/name[:quant]) into the model store; a ModelError exits through main's table."""
    quiet = bool(getattr(args, "quiet", False))
    if not getattr(args, "verbose", False):
        _quiet_library_logs()
    store = ModelStore(Paths.resolve().models_dir)
    view: ProgressView | None = None
    try:
        plan = hub.plan(store, args.spec, revision=getattr(args, "revision", None), name=getattr(args, "name", None))
        if not quiet:
            print(_describe(plan), flush=True)
        if not getattr(args, "yes", False) and ui.interactive():
            remaining = plan.total_bytes - plan.have_bytes
            if not ui.ask_confirm(f"Download {format_size(remaining)} into {store.root}?", default=True):
                print("Nothing was downloaded.")
                return ExitStatus.OK
        if not quiet:
            view = ProgressView(sys.stderr, ui.is_tty(sys.stderr))
        entry = hub.download(store, plan, progress=view)
    except KeyboardInterrupt:
        if view is not None:
            view.close()
        print("pensieve: download paused; run the same command again to resume", file=sys.stderr)
        raise
    finally:
        if view is not None:
            view.close()
    if quiet:
        print(entry.name)
        return ExitStatus.OK
    ui.success(f"Installed {entry.name} ({entry.format.upper()}, {format_size(entry.size_bytes)}, "
               f"{entry.context_length} tokens of context) from {plan.repo}")
    print(f"Make it the default: pensieve models default {entry.name}")
    return ExitStatus.OK
