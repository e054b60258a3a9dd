"""Where a repo's file list comes from: the Hub's API online, the Hugging Face cache offline.

Both give a :class:`Listing` (the commit, every file's size, and the chosen files with their hashes),
so one planning path serves both. The environment is read at call time (huggingface_hub reads it
once, at import): HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pensieve_server.models.hub.errors import hub_errors
from pensieve_server.models.store import ModelError

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: its size and, where the Hub gives them, the hashes to check it against."""

    path: str
    size: int
    sha256: str | None = None  # LFS files: SHA-256 of the content
    blob_id: str | None = None  # other files: the git blob id (SHA-1 of "blob <size>\0" + content)
    cached: str | None = None  # the same file already in the Hugging Face cache: copied, not downloaded


@dataclass(frozen=True)
class Listing:
    """A repo's files at one commit: enough to choose the model's files and plan their download."""

    commit: str
    sizes: dict[str, int]  # every file, in the source's order
    describe: Callable[[str], RemoteFile]  # a chosen file with its hashes and any cached copy
    not_a_model: str  # what to say when the files are neither an MLX folder nor a GGUF


def offline_mode() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_listing(repo: str, revision: str, endpoint: str | None) -> Listing:
    """The files of ``repo`` at ``revision`` as the Hub lists them (sizes, LFS SHA-256, git blob ids)."""
    with hub_errors(repo, revision, endpoint):
        from huggingface_hub import HfApi

        info = HfApi(endpoint=endpoint).model_info(repo, revision=revision, files_metadata=True)
    commit = info.sha or revision
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    sizes = {p: (s.lfs.size if s.lfs else s.size) or 0 for p, s in siblings.items()}
    cache = _hf_cache_dir()

    def describe(path: str) -> RemoteFile:
        sibling = siblings[path]
        size = sizes[path]
        if sibling.size is None and sibling.lfs is None:
            size = _remote_size(repo, commit, path, endpoint)
        return RemoteFile(path, size, sibling.lfs.sha256 if sibling.lfs else None,
                          None if sibling.lfs else sibling.blob_id, _cached(cache, repo, commit, path))

    return Listing(commit, sizes, describe, f"{repo} has neither MLX weights (config.json and *.safetensors) "
                   "nor a GGUF file; Pensieve cannot run it")


def cache_listing(repo: str, revision: str) -> Listing:
    """HF_HUB_OFFLINE: the files of ``repo`` in the Hugging Face cache, copied instead of downloaded."""
    snapshot = _cache_snapshot(repo, revision)
    if snapshot is None:
        raise ModelError(f"offline mode is on (HF_HUB_OFFLINE) and {repo} is not downloaded or cached yet; "
                         "unset HF_HUB_OFFLINE to download it")
    paths = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    sizes = {p: (snapshot / p).stat().st_size for p in paths}

    def describe(path: str) -> RemoteFile:
        blob = Path(os.path.realpath(snapshot / path)).name  # LFS blobs are named by their SHA-256
        sha = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None
        return RemoteFile(path, sizes[path], sha, None, str(snapshot / path))

    return Listing(snapshot.name, sizes, describe, f"offline mode is on (HF_HUB_OFFLINE) and the cached copy of "
                   f"{repo} is not a model Pensieve can run; unset HF_HUB_OFFLINE to download it")


def _remote_size(repo: str, commit: str, path: str, endpoint: str | None) -> int:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    with hub_errors(repo, commit, endpoint, path):
        meta = get_hf_file_metadata(hf_hub_url(repo, path, revision=commit, endpoint=endpoint), endpoint=endpoint)
    return meta.size or 0


def _cached(cache: Path, repo: str, commit: str, path: str) -> str | None:
    """The file in the Hugging Face cache (e.g. left there by mlx_lm), if it holds this commit's copy."""
    if not cache.is_dir():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, path, cache_dir=cache, revision=commit)
    except Exception:  # noqa: BLE001 - a broken cache is just not a cache
        return None
    return found if isinstance(found, str) else None


def _cache_snapshot(repo: str, revision: str) -> Path | None:
    cache = _hf_cache_dir() / f"models--{repo.replace('/', '--')}"
    commit = revision
    ref = cache / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    snapshot = cache / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None
