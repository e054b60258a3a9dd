"""The on-disk store of prefix states: integrity, bounds, LRU, full disk and concurrent writers.

The engines' own round trip (a state saved by one process restores in another with identical
greedy output) is in test_disk_restore.py.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from pensieve_server.engine import disk_states
from pensieve_server.engine.disk_states import (
    SUFFIX,
    TEMP_PREFIX,
    DiskStates,
    clear_folder,
    folder_usage,
    list_folder,
)

IDENTITY = {"engine": "test", "version": "1", "model": {"path": "/m.gguf", "files": [["/m.gguf", 10, 1]]}}


def store(folder: Path, limit: int = 10**9, identity: dict | None = None) -> DiskStates:
    return DiskStates(folder, identity or IDENTITY, limit, min_tokens=8, save_step=4)


def tokens(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int64)


def payload_for(toks: np.ndarray) -> bytes:
    """Bytes that depend on the tokens, so a payload served for the wrong tokens is noticed."""
    return np.repeat(toks.astype("<i4"), 50).tobytes()


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + SUFFIX))


def test_a_state_written_by_one_store_is_read_by_another(tmp_path: Path) -> None:
    first = store(tmp_path)
    system = tokens(40)
    first.write(system, payload_for(system))
    longer = tokens(60)
    first.write(longer, payload_for(longer))
    assert len(files(tmp_path)) == 1, "a state whose tokens are a prefix of a newer one is superseded"

    second = store(tmp_path)  # as after a restart: an empty index, the same folder
    prompt = np.concatenate([tokens(50), tokens(30, 1000)])
    entry, shared = second.best(prompt)
    assert entry is not None and shared == 50
    assert second.read(entry) == payload_for(longer)
    assert np.array_equal(entry.tokens, longer)
    assert second.hits == 1

    other_model = store(tmp_path, identity={**IDENTITY, "version": "2"})
    assert other_model.best(prompt) == (None, 0), "a state of another engine version is never offered"


def test_restorable_needs_a_real_gain(tmp_path: Path) -> None:
    disk = store(tmp_path)
    saved = tokens(2000)
    disk.write(saved, payload_for(saved))
    assert disk.restorable(tokens(1500), have=1400) == (None, 0), "memory already holds nearly all of it"
    entry, shared = disk.restorable(tokens(1500), have=0)
    assert entry is not None and shared == 1500
    assert disk.restorable(tokens(100, 5000), have=0) == (None, 0)
    assert disk.misses == 0, "prompts shorter than the least worthwhile gain are not lookups"


def test_wants_only_new_long_sequences(tmp_path: Path) -> None:
    disk = store(tmp_path)
    assert not disk.wants(tokens(5)), "too short"
    assert disk.wants(tokens(20))
    disk.write(tokens(20), payload_for(tokens(20)))
    assert not disk.wants(tokens(22)), "adds fewer than save_step tokens to what is saved"
    assert disk.wants(tokens(30))
    off = DiskStates(tmp_path, IDENTITY, 0)
    assert not off.wants(tokens(100))


def test_background_save_and_flush(tmp_path: Path) -> None:
    disk = store(tmp_path)
    made = threading.Event()

    def make() -> bytes:
        made.set()
        return payload_for(tokens(30))

    disk.save(tokens(30), make)
    assert not disk.wants(tokens(31)), "a queued state already covers its tokens"
    assert disk.flush(30)
    assert made.is_set() and len(files(tmp_path)) == 1 and disk.saved == 1
    disk.close()


def test_lent_memory_comes_back_once_after_the_write_or_at_once_when_not_saved(tmp_path: Path) -> None:
    """The engine lends its state buffer to the writer (llamacpp_state.StateBuffer): it must get it back
    exactly once, after the file is on disk, or at once when the state is not saved at all."""
    disk = store(tmp_path / "a")
    returned: list[int] = []
    disk.save(tokens(30), lambda: memoryview(payload_for(tokens(30))),
              done=lambda: returned.append(len(files(tmp_path / "a"))))
    assert disk.flush(30)
    assert returned == [1], "given back once, with the file written"
    disk.close()
    off = store(tmp_path / "b", limit=0)
    off.save(tokens(30), lambda: payload_for(tokens(30)), done=lambda: returned.append(-1))
    assert returned == [1, -1], "not saving: given back at once"
    busy = store(tmp_path / "c")
    gate, taken = threading.Event(), threading.Event()
    busy.save(tokens(30), lambda: (taken.set(), gate.wait(30), payload_for(tokens(30)))[2])  # the writer waits
    assert taken.wait(30)
    for start in (100, 200):  # the queue (2) fills up behind it
        busy.save(tokens(30, start), lambda s=start: payload_for(tokens(30, s)), done=lambda: returned.append(0))
    busy.save(tokens(30, 300), lambda: payload_for(tokens(30, 300)), done=lambda: returned.append(-2))
    assert returned[-1] == -2, "writer busy and queue full: given back at once"
    assert returned.count(0) == 0, "the queued ones are still lent"
    gate.set()
    assert busy.flush(30)
    assert returned.count(0) == 2, "each queued one after its write"
    busy.close()


@pytest.mark.parametrize("damage", ["flip_payload", "truncate_payload", "truncate_header", "foreign_format",
                                    "other_identity", "garbage", "empty"])
def test_damaged_files_are_skipped_once_and_never_served(tmp_path: Path, damage: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    writer = store(tmp_path)
    good, bad = tokens(30), tokens(40, 500)
    writer.write(good, payload_for(good))
    path = writer.write(bad, payload_for(bad))
    assert path is not None
    data = path.read_bytes()
    if damage == "flip_payload":
        data = data[:-7] + bytes([data[-7] ^ 0xFF]) + data[-6:]
    elif damage == "truncate_payload":
        data = data[: len(data) - 100]
    elif damage == "truncate_header":
        data = data[:20]
    elif damage == "foreign_format":
        data = data.replace(b'"format": 1', b'"format": 9', 1)
    elif damage == "other_identity":
        other = store(tmp_path / "other", identity={**IDENTITY, "model": {"path": "/other.gguf", "files": []}})
        data = other.write(bad, payload_for(bad)).read_bytes()  # another model's file under this model's name
    elif damage == "garbage":
        data = os.urandom(len(data))
    else:
        data = b""
    path.write_bytes(data)

    reader = store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pensieve_server.engine.disk_states"):
        for _ in range(3):
            entry, _ = reader.best(bad)
            if entry is not None:
                assert reader.read(entry) is None
    warnings = [r for r in caplog.records if "skipping prefix state file" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    entry, shared = reader.best(good)
    assert shared == 30 and reader.read(entry) == payload_for(good), "the intact state is still served"


def test_a_file_replaced_after_indexing_is_not_served(tmp_path: Path) -> None:
    disk = store(tmp_path)
    first = tokens(30)
    path = disk.write(first, payload_for(first))
    reader = store(tmp_path)
    entry, _ = reader.best(first)
    other = tokens(30, 7)
    donor = store(tmp_path / "donor").write(other, payload_for(other))
    os.replace(donor, path)  # same name, other tokens: e.g. a hash collision or a stray copy
    assert reader.read(entry) is None


def test_disk_use_never_exceeds_the_limit_and_lru_goes_first(tmp_path: Path) -> None:
    one = store(tmp_path / "probe").write(tokens(30), payload_for(tokens(30))).stat().st_size + 64
    disk = store(tmp_path, limit=3 * one)
    written = []
    for i in range(3):
        t = tokens(30, 1000 * i)
        written.append(disk.write(t, payload_for(t)))
        assert folder_usage(tmp_path)[0] <= disk.limit_bytes
    entry, _ = disk.best(tokens(30, 0))
    os.utime(written[1], (1, 1))
    os.utime(written[2], (2, 2))
    assert disk.read(entry) is not None  # the oldest file, now used again
    for i in range(3, 8):
        t = tokens(30, 1000 * i)
        disk.write(t, payload_for(t))
        assert folder_usage(tmp_path)[0] <= disk.limit_bytes
        if i == 3:
            assert written[0].exists() and not written[1].exists(), "the least recently used went first"
    assert disk.write(tokens(10**4), b"x" * (4 * one)) is None, "a state larger than the limit is not written"
    assert folder_usage(tmp_path)[0] <= disk.limit_bytes


class _FullDisk:
    """Every write to a temporary state file fails with ENOSPC after half of it lands (as a full disk does)."""

    def __init__(self) -> None:
        self.real_fdopen = os.fdopen
        self.failed = 0

    def fdopen(self, fd: int, mode: str = "r", *args: object, **kwargs: object):  # noqa: ANN201 - a file object
        handle = self.real_fdopen(fd, mode, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if "w" in mode and name.startswith(TEMP_PREFIX):
            disk = self

            class Failing:
                def write(self, data: bytes) -> int:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    disk.failed += 1
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                def __enter__(self):  # noqa: ANN204
                    return self

                def __exit__(self, *exc: object) -> None:
                    handle.close()

            return Failing()
        return handle


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files via /proc")
def test_a_full_disk_turns_saving_off_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    disk = store(tmp_path)
    kept = tokens(30)
    disk.write(kept, payload_for(kept))
    full = _FullDisk()
    monkeypatch.setattr(disk_states.os, "fdopen", full.fdopen)
    with caplog.at_level(logging.WARNING, logger="pensieve_server.engine.disk_states"):
        assert disk.write(tokens(40, 100), payload_for(tokens(40, 100))) is None
        disk.save(tokens(50, 300), lambda: payload_for(tokens(50, 300)))
        disk.flush(10)
    assert full.failed == 1 and not disk.saving and not disk.wants(tokens(500, 9))
    assert len([r for r in caplog.records if "full" in r.getMessage()]) == 1
    assert not list(tmp_path.glob(TEMP_PREFIX + "*")), "the half-written temporary file is removed"
    monkeypatch.undo()
    entry, _ = disk.best(kept)
    assert disk.read(entry) == payload_for(kept), "restoring still works"


def _writer(folder: str, seed: int, count: int, limit: int) -> None:
    disk = DiskStates(Path(folder), IDENTITY, limit, min_tokens=8, save_step=4)
    for i in range(count):
        t = tokens(200 + (i % 5) * 10, seed * 100_000 + i * 1000)
        disk.write(t, payload_for(t))


def test_concurrent_writers_stay_valid_and_within_the_limit(tmp_path: Path) -> None:
    one = len(payload_for(tokens(240))) + 2000
    limit = 6 * one
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_writer, args=(str(tmp_path), seed, 15, limit)) for seed in range(3)]
    peak = 0
    for proc in procs:
        proc.start()
    while any(p.is_alive() for p in procs):
        peak = max(peak, folder_usage(tmp_path)[0])
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert peak <= limit and folder_usage(tmp_path)[0] <= limit
    reader = store(tmp_path, limit)
    reader.refresh()
    saved = files(tmp_path)
    assert saved and not list(tmp_path.glob(TEMP_PREFIX + "*"))
    for path in saved:  # every file left is whole and holds the payload of its own tokens
        entry = reader._entries[path.name]
        assert reader.read(entry) == payload_for(entry.tokens)


def test_clear_and_list(tmp_path: Path) -> None:
    disk = store(tmp_path)
    for i in range(3):
        disk.write(tokens(30, 100 * i), payload_for(tokens(30, 100 * i)))
    rows = list_folder(tmp_path)
    assert [r["tokens"] for r in rows] == [30, 30, 30] and rows[0]["engine"] == "test"
    removed, freed = clear_folder(tmp_path)
    assert removed == 3 and freed > 0 and folder_usage(tmp_path) == (0, 0)
    assert disk.best(tokens(30)) == (None, 0)
    assert clear_folder(tmp_path / "missing") == (0, 0)
