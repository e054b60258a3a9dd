"""Downloading a planned pull and installing it (``pensieve models pull``).

Files go to a persistent folder per repo and commit, each as ``<file>.incomplete`` until complete,
so running the same command again after a lost connection resumes with an HTTP Range request
instead of starting over. huggingface_hub 2.4.0's ``hf_hub_download`` deletes its partial file on
failure, so we use its building blocks instead (``get_hf_file_metadata`` for the HEAD, ``http_get``
with ``resume_size`` for the bytes). Verified files move into the store through
:meth:`ModelStore.install`, whose manifest, written last, is what makes the model listed.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pensieve_server.models.hub.errors import hub_errors
from pensieve_server.models.hub.listing import RemoteFile
from pensieve_server.models.hub.planning import (
    INCOMPLETE,
    LOCK_FILE,
    PullPlan,
    check_free_name,
    plan,
    save_plan,
)
from pensieve_server.models.hub.progress import Bar, ProgressCallback, Tracker
from pensieve_server.models.hub.verify import describe, verify
from pensieve_server.models.store import ModelEntry, ModelError, ModelStore
from pensieve_server.units import format_size


def _free_bytes(path: Path) -> int:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 1 << 62  # pragma: no cover - nothing to ask: do not block the download


def _check_space(p: PullPlan) -> None:
    needed = p.total_bytes - p.have_bytes
    free = _free_bytes(p.download_dir)
    if needed > free:
        raise ModelError(f"not enough disk space for {p.repo}: {format_size(needed)} still to download, "
                         f"{format_size(free)} free at {p.download_dir.parent}; free some space and run again")


def _lock(folder: Path) -> Any:
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ModelError(f"another `pensieve models pull` is downloading into {folder}; "
                         "wait for it to finish") from None
    return lock


def _prune_stale(p: PullPlan) -> None:
    """Partial downloads of other commits of this repo are useless once the Hub moved on; free their space."""
    from filelock import FileLock, Timeout

    for other in (p.download_dir.parent).glob(f"{p.repo.replace('/', '--')}@*"):
        if other == p.download_dir or not other.is_dir():
            continue
        lock = FileLock(str(other / LOCK_FILE), timeout=0)
        try:
            with lock:
                shutil.rmtree(other, ignore_errors=True)
        except (Timeout, OSError):
            continue


def _fetch(p: PullPlan, f: RemoteFile, dest: Path, tracker: Tracker) -> None:
    """Download one file into ``<dest>.incomplete``, resuming from its size, then rename it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    part = dest.with_name(dest.name + INCOMPLETE)
    resume = part.stat().st_size if part.is_file() else 0
    if resume > f.size:
        part.unlink()
        resume = 0
    tracker.start("download", f.path, f.size, resume)
    url = hf_hub_url(p.repo, f.path, revision=p.commit, endpoint=p.endpoint)
    with hub_errors(p.repo, p.revision, p.endpoint, f.path):
        meta = get_hf_file_metadata(url, endpoint=p.endpoint)
        if meta.size is not None and meta.size != f.size:
            raise ModelError(f"{p.repo}/{f.path} changed on the Hub while pulling ({meta.size} bytes, expected "
                             f"{f.size}); run the same command again")
        headers = build_hf_headers()
        location = meta.location or url
        if _origin(location) != _origin(url):
            headers.pop("authorization", None)  # a signed CDN url: the token stays on the Hub
        if resume < f.size:
            with open(part, "r+b" if resume else "wb") as handle:
                handle.seek(resume)
                http_get(location, handle, resume_size=resume, headers=headers, expected_size=f.size,
                         displayed_filename=f.path, tqdm_class=functools.partial(Bar, tracker))
        else:
            part.touch()
    os.replace(part, dest)
    tracker.finish()


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = urlparse(url)
    return parsed.scheme, (parsed.hostname or "").lower(), parsed.port


def _copy_cached(f: RemoteFile, dest: Path, tracker: Tracker) -> None:
    assert f.cached is not None
    tracker.start("download", f.path, f.size)
    part = dest.with_name(dest.name + INCOMPLETE)
    shutil.copyfile(f.cached, part)
    os.replace(part, dest)
    tracker.finish()


def download(store: ModelStore, p: PullPlan, progress: ProgressCallback | None = None) -> ModelEntry:
    """Fetch (or resume) the plan's files, verify them and install the model; the manifest comes last."""
    p.download_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(p.download_dir)
    try:
        if not p.offline:
            _prune_stale(p)
        check_free_name(store, p.name)
        _check_space(p)
        save_plan(p)
        tracker = Tracker(p, progress)
        for f in p.files:
            dest = p.download_dir / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_file() and dest.stat().st_size == f.size:
                tracker.start("download", f.path, f.size, f.size)
                tracker.finish()
                continue
            dest.unlink(missing_ok=True)
            if f.cached and Path(f.cached).is_file():
                _copy_cached(f, dest, tracker)
            elif p.offline:
                raise ModelError(f"offline mode is on (HF_HUB_OFFLINE) and {p.repo}/{f.path} is not downloaded "
                                 "yet; unset HF_HUB_OFFLINE to download it")
            else:
                _fetch(p, f, dest, tracker)
        verify(p, tracker)
        entry = describe(p)
        tracker.restart("install")
        tracker.start("install", p.name, 0)
        installed = store.install(p.name, functools.partial(_move_into, p, entry))
        tracker.phase, tracker.done, tracker.files_done = "done", tracker.total, tracker.files_total
        tracker.emit()
    finally:
        lock.release()
    shutil.rmtree(p.download_dir, ignore_errors=True)
    return installed


def pull(store: ModelStore, spec: str, revision: str | None = None, name: str | None = None,
         progress: ProgressCallback | None = None, prefer: str | None = None) -> ModelEntry:
    """Download ``spec`` (catalogue alias or ``owner/name[:quant]``) from the Hub and install it."""
    return download(store, plan(store, spec, revision, name, prefer), progress)


def _move_into(p: PullPlan, entry: ModelEntry, staging: Path) -> ModelEntry:
    for f in p.files:
        target = staging / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p.download_dir / f.path, target)
    path = staging / p.weights if p.format == "gguf" else staging
    return replace(entry, path=str(path))
