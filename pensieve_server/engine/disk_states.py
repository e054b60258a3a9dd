"""Prefix (KV) states on disk, so that a restart does not pay a long prompt's cold prefill again.

Claude Code opens every session with thousands of tokens of system prompt and tools; computing them
takes a minute on a laptop CPU. Backends save the state of a long sequence here (in the background)
and, after a restart, restore the longest saved state sharing a prefix with a new prompt.

One file per state, named ``<identity key>-<tokens hash>.kvstate`` in the cache folder. The identity
key hashes everything that makes a state usable: the model file (path, size, mtime), the engine and
its version, and the context and KV settings. A file holds a header (format, identity, token count,
payload size, SHA-256), the tokens and the engine's payload. A file that is truncated, corrupt, of
another format or identity, or whose tokens differ from its name's index entry is skipped with one
log line and never restored: output with and without the disk store is the same.

Writes go to a temporary file that is renamed into place; one lock file serialises writers (also
across processes), and eviction (least recently used first; a restore marks a file used) happens
under that lock before each write, so the folder never holds more than its byte limit. A full disk
only turns saving off.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import queue
import shutil
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pensieve_server.engine.saved_states import common_prefix

log = logging.getLogger(__name__)

MAGIC = b"PENSIEVE-KV\n"
FORMAT = 1
SUFFIX = ".kvstate"
TEMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"
# Only sequences at least this long are saved (Claude Code's title request, ~400 tokens, is; a probe is not).
MIN_TOKENS = 256
# Save again only when a sequence adds this many tokens (or half its length) to the states on disk.
SAVE_STEP = 1024
# Restore from disk only when it saves this many tokens of prefill over what memory already has.
MIN_GAIN = 256
AUTO_LIMIT_CAP = 10 * 1024**3
STALE_TEMP_S = 3600.0
_HEADER_LEN = struct.Struct("<I")


def auto_disk_bytes(folder: Path) -> int:
    """The default bound: 10% of the free disk under ``folder``, at most 10 GiB."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return 0
    return min(AUTO_LIMIT_CAP, free // 10)


def resolve_disk_bytes(setting: int, folder: Path) -> int:
    """``disk_cache_bytes`` as a byte limit: negative means automatic, 0 means off."""
    return auto_disk_bytes(folder) if setting < 0 else setting


def file_identity(weights: Path) -> dict[str, Any]:
    """Path, size and modification time of a model file, or of every file in a model folder."""
    path = Path(weights).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = []
    for item in files:
        try:
            st = item.stat()
        except OSError:
            continue
        stats.append([str(item.relative_to(path)) if path.is_dir() else str(item), st.st_size, st.st_mtime_ns])
    return {"path": str(path), "files": stats}


def tokens_hash(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest()


@dataclass(frozen=True)
class DiskEntry:
    """One state file of this identity: its tokens (from its header) and its size."""

    path: Path
    tokens: np.ndarray
    size: int


class BadStateFile(Exception):
    """A state file that must not be restored; the message says why (logged once)."""


def _read_header(handle: Any, key: str) -> tuple[dict[str, Any], np.ndarray, int]:
    """``(header, tokens, payload offset)`` of an open state file, or BadStateFile."""
    if handle.read(len(MAGIC)) != MAGIC:
        raise BadStateFile("not a Pensieve state file")
    raw = handle.read(_HEADER_LEN.size)
    if len(raw) != _HEADER_LEN.size:
        raise BadStateFile("truncated header")
    (length,) = _HEADER_LEN.unpack(raw)
    if length > 1024**2:
        raise BadStateFile("header too large")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadStateFile("unreadable header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BadStateFile(f"format {header.get('format') if isinstance(header, dict) else '?'}, not {FORMAT}")
    if header.get("key") != key:
        raise BadStateFile("made for another model, engine version or context")
    count = header.get("n_tokens")
    if not isinstance(count, int) or count <= 0 or not isinstance(header.get("payload_bytes"), int):
        raise BadStateFile("bad token or payload count")
    data = handle.read(4 * count)
    if len(data) != 4 * count:
        raise BadStateFile("truncated tokens")
    return header, np.frombuffer(data, dtype="<i4").astype(np.int64), len(MAGIC) + _HEADER_LEN.size + length + 4 * count


class DiskStates:
    """The state files of one loaded model, bounded in bytes together with every other model's."""

    def __init__(self, folder: Path, identity: Mapping[str, Any], limit_bytes: int,
                 min_tokens: int = MIN_TOKENS, save_step: int = SAVE_STEP) -> None:
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:24]
        self.limit_bytes = limit_bytes
        self.min_tokens = min_tokens
        self.save_step = save_step
        self.saving = limit_bytes > 0
        self.hits = self.misses = self.saved = 0
        self._entries: dict[str, DiskEntry] = {}
        self._queued: dict[str, np.ndarray] = {}  # states handed to the writer, not on disk yet
        self._skipped: set[tuple[str, int]] = set()  # (name, mtime_ns) already reported
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[np.ndarray, Callable[[], bytes | memoryview], Callable[[], None]] | None] = (
            queue.Queue(maxsize=2))
        self._writer: threading.Thread | None = None
        self._pending = 0

    # -- lookup --------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Bring the index up to date with the folder (other processes write to it too)."""
        if self.limit_bytes <= 0:
            return
        try:
            names = {e.name: e for e in os.scandir(self.folder)
                     if e.name.startswith(self.key + "-") and e.name.endswith(SUFFIX)}
        except OSError:
            names = {}
        with self._lock:
            for gone in set(self._entries) - set(names):
                del self._entries[gone]
        for name, item in names.items():
            if name in self._entries:
                continue
            path = Path(item.path)
            try:
                size = item.stat().st_size
                with path.open("rb") as handle:
                    _, tokens, _ = _read_header(handle, self.key)
            except FileNotFoundError:
                continue
            except (OSError, BadStateFile) as exc:
                self._skip(path, exc)
                continue
            with self._lock:
                self._entries[name] = DiskEntry(path, tokens, size)

    def best(self, prompt: Sequence[int] | np.ndarray) -> tuple[DiskEntry | None, int]:
        """The state sharing the longest prefix with ``prompt``, and how many tokens it shares."""
        self.refresh()
        found, shared = None, 0
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            n = common_prefix(entry.tokens, prompt)
            if n > shared:
                found, shared = entry, n
        return found, shared

    def restorable(self, prompt: Sequence[int] | np.ndarray, have: int) -> tuple[DiskEntry | None, int]:
        """The state to restore for ``prompt`` when memory already holds ``have`` of its tokens, or (None, 0).

        Counts a lookup (hit or miss) for every prompt long enough to be worth one.
        """
        if self.limit_bytes <= 0 or len(prompt) - have < MIN_GAIN:
            return None, 0
        entry, shared = self.best(prompt)
        if entry is None or min(shared, len(prompt) - 1) < have + MIN_GAIN:
            self.misses += 1
            return None, 0
        return entry, shared

    def read(self, entry: DiskEntry) -> bytes | None:
        """The verified payload of ``entry``, or None (logged once) when the file cannot be trusted."""
        try:
            with entry.path.open("rb") as handle:
                header, tokens, _ = _read_header(handle, self.key)
                if not np.array_equal(tokens, entry.tokens):
                    raise BadStateFile("its tokens changed since it was indexed")
                if header.get("identity") != json.loads(json.dumps(self.identity)):
                    raise BadStateFile("made for another model, engine version or context")
                payload = handle.read(header["payload_bytes"] + 1)
            if len(payload) != header["payload_bytes"]:
                raise BadStateFile("truncated or overlong payload")
            digest = hashlib.sha256(tokens.astype("<i4").tobytes())
            digest.update(payload)
            if digest.hexdigest() != header.get("sha256"):
                raise BadStateFile("checksum mismatch (corrupt)")
        except FileNotFoundError:  # evicted by another process meanwhile
            self._forget(entry.path.name)
            self.misses += 1
            return None
        except (OSError, BadStateFile, KeyError, TypeError) as exc:
            self._skip(entry.path, exc)
            self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # least recently used goes first: a restore counts as a use
        self.hits += 1
        return payload

    def reject(self, entry: DiskEntry, reason: str) -> None:
        """The engine could not use a verified payload (e.g. llama.cpp refused it): skip the file from now on."""
        self.hits -= 1
        self.misses += 1
        self._skip(entry.path, BadStateFile(reason))

    # -- saving --------------------------------------------------------------------------------------
    def wants(self, tokens: Sequence[int] | np.ndarray) -> bool:
        """Whether ``tokens`` would add enough to the states on disk to be worth saving."""
        if not self.saving or len(tokens) < self.min_tokens:
            return False
        with self._lock:
            entries = list(self._entries.values()) + [DiskEntry(Path(), t, 0) for t in self._queued.values()]
        covered = max((common_prefix(e.tokens, tokens) for e in entries), default=0)
        return len(tokens) - covered >= min(self.save_step, len(tokens) // 2)

    def save(self, tokens: Sequence[int] | np.ndarray, payload: Callable[[], bytes | memoryview],
             done: Callable[[], None] | None = None) -> None:
        """Write a state in the background; ``payload`` makes its bytes (on the writer thread) from a snapshot.

        ``done`` runs exactly once, when the payload is no longer needed: after the write, or at once when
        the state is not saved (the caller lent memory it wants back).
        """
        finished = done or _nothing
        if not self.saving:
            finished()
            return
        tokens = np.array(tokens, dtype=np.int64)
        with self._lock:
            try:
                self._queue.put_nowait((tokens, payload, finished))
            except queue.Full:
                log.debug("prefix state writer busy; not saving a state of %d tokens", len(tokens))
                finished()
                return
            self._pending += 1
            # Covered at once, so the next turn does not queue the same prefix again.
            self._queued[tokens_hash(tokens)] = tokens
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="prefix-state-writer", daemon=True)
                self._writer.start()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until queued states are written (tests, shutdown); False when time ran out."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._pending

    def close(self, timeout: float = 30.0) -> None:
        """Finish the writes in flight, then stop the writer."""
        self.flush(timeout)
        if self._writer is not None and self._writer.is_alive():
            self._queue.put(None)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            tokens, payload, finished = item
            try:
                self.write(tokens, payload())
            except Exception:  # noqa: BLE001 - a failed save must never stop serving
                log.warning("could not save a prefix state of %d tokens", len(tokens), exc_info=True)
            finally:
                finished()
                with self._lock:
                    self._queued.pop(tokens_hash(tokens), None)
                    self._pending -= 1

    def write(self, tokens: np.ndarray, payload: bytes | memoryview) -> Path | None:
        """Write one state now (atomically, within the byte limit); None when it was not written."""
        tokens = np.asarray(tokens, dtype=np.int64)
        token_bytes = tokens.astype("<i4").tobytes()
        digest = hashlib.sha256(token_bytes)
        digest.update(payload)
        header = json.dumps({"format": FORMAT, "key": self.key, "identity": self.identity, "n_tokens": len(tokens),
                             "payload_bytes": len(payload), "sha256": digest.hexdigest(),
                             "saved_at": time.time()}).encode()
        size = len(MAGIC) + _HEADER_LEN.size + len(header) + len(token_bytes) + len(payload)
        if not self.saving or size > self.limit_bytes:
            return None
        final = self.folder / f"{self.key}-{tokens_hash(tokens)[:32]}{SUFFIX}"
        temp = self.folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._folder_lock():
                self._evict(size, keep=final.name)
                with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                    for part in (MAGIC, _HEADER_LEN.pack(len(header)), header, token_bytes, payload):
                        handle.write(part)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, final)
                self._supersede(tokens, final.name)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.saving = False
                log.warning("the disk under %s is full: prefix states are no longer saved to disk", self.folder)
            else:
                log.warning("could not save a prefix state to %s: %s", self.folder, exc.strerror or exc)
            return None
        with self._lock:
            self._entries[final.name] = DiskEntry(final, tokens, size)
        self.saved += 1
        log.debug("saved a prefix state of %d tokens (%d MB) to disk", len(tokens), size // 1024**2)
        return final

    def _supersede(self, tokens: np.ndarray, name: str) -> None:
        """Delete this identity's states whose tokens are a prefix of ``tokens``: the new one serves them all."""
        with self._lock:
            older = [e for n, e in self._entries.items() if n != name
                     and len(e.tokens) <= len(tokens) and common_prefix(e.tokens, tokens) == len(e.tokens)]
        for entry in older:
            entry.path.unlink(missing_ok=True)
            self._forget(entry.path.name)

    def _evict(self, incoming: int, keep: str) -> None:
        """Delete least recently used files (of any model) until ``incoming`` more bytes fit."""
        files = []
        now = time.time()
        for item in os.scandir(self.folder):
            try:
                st = item.stat()
            except FileNotFoundError:
                continue
            if item.name.startswith(TEMP_PREFIX):
                if now - st.st_mtime > STALE_TEMP_S:  # left by a process that died while writing
                    Path(item.path).unlink(missing_ok=True)
                    continue
            elif not item.name.endswith(SUFFIX):
                continue
            files.append((st.st_mtime, item.name, st.st_size, Path(item.path)))
        used = sum(f[2] for f in files if f[1] != keep)  # a file being replaced frees its bytes
        for _, name, size, path in sorted(files):
            if used + incoming <= self.limit_bytes:
                break
            if name == keep or name.startswith(TEMP_PREFIX):
                continue
            path.unlink(missing_ok=True)
            self._forget(name)
            used -= size

    @contextmanager
    def _folder_lock(self) -> Iterator[None]:
        """One writer at a time in this folder, across processes (flock where the OS has it)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: writers of one process are still serialised
            with _PROCESS_LOCK:
                yield
            return
        with _PROCESS_LOCK, open(self.folder / LOCK_NAME, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _forget(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def _skip(self, path: Path, exc: BaseException) -> None:
        """Report an unusable file once; delete it when it claims to be ours (it would fail again)."""
        self._forget(path.name)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            mtime = 0
        if (path.name, mtime) not in self._skipped:
            self._skipped.add((path.name, mtime))
            log.warning("skipping prefix state file %s: %s", path.name, exc)
        if path.name.startswith(self.key + "-"):
            path.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any]:
        """Bytes and files in the folder (all models), the limit, and this model's hits and misses."""
        used, files = folder_usage(self.folder)
        return {"bytes": used, "files": files, "limit_bytes": self.limit_bytes, "hits": self.hits,
                "misses": self.misses, "saved": self.saved, "saving": self.saving}


_PROCESS_LOCK = threading.Lock()


def _nothing() -> None:
    """No memory to give back."""


def folder_usage(folder: Path) -> tuple[int, int]:
    """``(bytes, files)`` of the state files in ``folder`` (temporary files included in the bytes)."""
    used = files = 0
    try:
        for item in os.scandir(folder):
            if item.name.endswith(SUFFIX) or item.name.startswith(TEMP_PREFIX):
                try:
                    used += item.stat().st_size
                except FileNotFoundError:
                    continue
                files += item.name.endswith(SUFFIX)
    except OSError:
        pass
    return used, files


def clear_folder(folder: Path) -> tuple[int, int]:
    """Delete every state file in ``folder``; ``(files, bytes)`` deleted."""
    removed = freed = 0
    try:
        items = list(os.scandir(folder))
    except FileNotFoundError:
        return 0, 0
    for item in items:
        if item.name.endswith(SUFFIX) or item.name.startswith(TEMP_PREFIX):
            try:
                size = item.stat().st_size
                os.unlink(item.path)
            except FileNotFoundError:
                continue
            removed += item.name.endswith(SUFFIX)
            freed += size
    return removed, freed


def list_folder(folder: Path) -> list[dict[str, Any]]:
    """The state files in ``folder``, most recently used first: name, tokens, bytes, last use, model."""
    rows = []
    try:
        items = [i for i in os.scandir(folder) if i.name.endswith(SUFFIX)]
    except FileNotFoundError:
        return []
    for item in items:
        try:
            st = item.stat()
            with open(item.path, "rb") as handle:
                key = item.name.split("-", 1)[0]
                header, tokens, _ = _read_header(handle, key)
        except (OSError, BadStateFile):
            continue
        identity = header.get("identity") or {}
        model = (identity.get("model") or {}).get("path", "") if isinstance(identity, dict) else ""
        rows.append({"file": item.name, "tokens": len(tokens), "bytes": st.st_size, "used_at": st.st_mtime,
                     "engine": identity.get("engine", "") if isinstance(identity, dict) else "", "model": model})
    return sorted(rows, key=lambda r: -r["used_at"])


def attach_disk_states(backend: Any, weights: Path, folder: Path, setting: int) -> None:
    """Give ``backend`` a disk store in ``folder`` bounded by the ``disk_cache_bytes`` setting (0: none)."""
    limit = resolve_disk_bytes(setting, folder)
    identity = backend.disk_identity(weights) if limit > 0 else None
    if identity is not None:
        backend.attach_disk(DiskStates(folder, identity, limit))


def disk_gauges(stores: Sequence[DiskStates], folder: Path) -> dict[str, float]:
    """/metrics gauges: the folder's bytes and files, the limit, and restores found (hits) or not (misses)."""
    used, files = folder_usage(folder)
    return {
        "pensieve_disk_cache_bytes": used,
        "pensieve_disk_cache_files": files,
        "pensieve_disk_cache_limit_bytes": max((s.limit_bytes for s in stores), default=0),
        "pensieve_disk_cache_hits": sum(s.hits for s in stores),
        "pensieve_disk_cache_misses": sum(s.misses for s in stores),
        "pensieve_disk_cache_saved": sum(s.saved for s in stores),
    }
