"""Checking what was downloaded before it is installed: every file's size and hash, then that the
files are a model Pensieve runs, as strictly as ``models import`` checks a file on disk."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from pensieve_server.models.formats.engines import check_architecture
from pensieve_server.models.formats.gguf import read_gguf_info, split_parts
from pensieve_server.models.formats.mlx import check_mlx_folder, mlx_architecture, mlx_context
from pensieve_server.models.hub.planning import PullPlan
from pensieve_server.models.hub.progress import Tracker
from pensieve_server.models.store import ModelEntry, ModelError

HASH_CHUNK = 8 * 1024 * 1024


def _hash_file(path: Path, algorithm: str, tracker: Tracker, prefix: bytes = b"") -> str:
    digest = hashlib.new(algorithm)
    digest.update(prefix)
    with open(path, "rb") as handle:
        for chunk in iter(functools.partial(handle.read, HASH_CHUNK), b""):
            digest.update(chunk)
            tracker.advance(len(chunk))
    return digest.hexdigest()


def verify(p: PullPlan, tracker: Tracker) -> None:
    """Sizes for every file, SHA-256 for LFS files, git blob ids for the rest; a bad file is removed."""
    tracker.restart("verify")
    for f in p.files:
        path = p.download_dir / f.path
        tracker.start("verify", f.path, f.size)
        size = path.stat().st_size
        problem = ""
        if size != f.size:
            problem = f"is {size} bytes, expected {f.size}"
        elif f.sha256 and _hash_file(path, "sha256", tracker) != f.sha256.lower():
            problem = "does not match its SHA-256"
        elif not f.sha256 and f.blob_id and re.fullmatch(r"[0-9a-f]{40}", f.blob_id) and \
                _hash_file(path, "sha1", tracker, b"blob %d\0" % size) != f.blob_id:
            problem = "does not match its git blob id"
        if problem:
            path.unlink(missing_ok=True)
            raise ModelError(f"downloaded {p.repo}/{f.path} {problem} (corrupted in transit?); it was removed, "
                             "run the same command again to download it again")
        tracker.finish()


def describe(p: PullPlan) -> ModelEntry:
    """Check the folder is a model Pensieve runs and read its architecture and context length.

    A GGUF goes through the one strict reader (every part of a split file) and must be an
    architecture llama.cpp runs as a chat model, exactly as on import.
    """
    folder = p.download_dir
    size = p.total_bytes
    if p.format == "gguf":
        path = folder / p.weights
        label = f"{p.repo}/{p.weights}"
        info = read_gguf_info(path, label)
        check_architecture(info.architecture, label)
        split_parts(path, info, label)
        ctx = p.context_length or info.context_length
        return ModelEntry(p.name, "gguf", str(path), p.source, ctx, size, info.architecture)
    config = check_mlx_folder(folder, p.repo)
    return ModelEntry(p.name, "mlx", str(folder), p.source, p.context_length or mlx_context(config), size,
                      mlx_architecture(config))
