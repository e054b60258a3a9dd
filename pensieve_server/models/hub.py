"""Downloading models from the Hugging Face Hub into the store (``pensieve models pull``).

Files go to a persistent folder per repo and commit, ``<models>/.downloads/<owner>--<name>@<commit>``,
each as ``<file>.incomplete`` until complete, so running the same command again after a lost
connection resumes with an HTTP Range request instead of starting over. huggingface_hub 2.4.0's
``hf_hub_download`` deletes its partial file on failure, so we use its building blocks instead
(``get_hf_file_metadata`` for the HEAD, ``http_get`` with ``resume_size`` for the bytes). Sizes and
SHA-256 (LFS files) or git blob ids (small files) are checked, the folder is checked to be a model
Pensieve runs (an MLX folder or a GGUF file), and only then is it moved into the store through
:meth:`ModelStore.install`, whose manifest, written last, is what makes it listed.

The environment is read at call time (huggingface_hub reads it once, at import): HF_ENDPOINT,
HF_TOKEN, HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from pensieve_server.models import catalog
from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.models.store import MANIFEST, ModelEntry, ModelError, ModelStore, validate_name

DOWNLOADS = ".downloads"
PLAN_FILE = ".pensieve-pull.json"  # the plan, beside the files: lets an offline re-run install them
LOCK_FILE = ".lock"
INCOMPLETE = ".incomplete"
DEFAULT_CONTEXT = 4096
HASH_CHUNK = 8 * 1024 * 1024
GGUF_MAGIC = b"GGUF"
# Best first, for GGUF repos with many quantisations: the usual 4-bit quality/size sweet spot.
GGUF_PREFERENCE = ("q4_k_m", "q4_k_s", "q4_0", "iq4_xs", "q4_1", "q4", "q5_k_m", "q5_0", "q6_k", "q8_0",
                   "bf16", "f16", "fp16", "f32")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_QUANT = re.compile(r"(?:^|[-_.])((?:i?q\d[a-z0-9_]*?)|bf16|fp?16|f32)(?:-\d{5}-of-\d{5})?\.gguf$", re.IGNORECASE)
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".ckpt", ".gguf",
                  ".png", ".jpg", ".jpeg", ".gif", ".webp")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
_TRUE = {"1", "true", "yes", "on"}


class HubNotFound(ModelError):
    """The repo, revision or file is not on the Hub (or not visible without a token)."""


# -- plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: its size and, where the Hub gives them, the hashes to check it against."""

    path: str
    size: int
    sha256: str | None = None  # LFS files: SHA-256 of the content
    blob_id: str | None = None  # other files: the git blob id (SHA-1 of "blob <size>\0" + content)
    cached: str | None = None  # the same file already in the Hugging Face cache: copied, not downloaded


@dataclass(frozen=True)
class PullPlan:
    """Everything decided before a byte is downloaded, so the CLI can show it and ask first."""

    repo: str
    revision: str
    commit: str
    name: str
    format: str  # "mlx" | "gguf"
    files: tuple[RemoteFile, ...]
    weights: str  # the GGUF file (first part of a split one); "" for an MLX folder
    context_length: int  # from the catalogue; 0: read from the model's own metadata
    download_dir: Path
    endpoint: str | None = None
    offline: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def have_bytes(self) -> int:
        """Bytes already on disk from an earlier, interrupted run."""
        return sum(_have(self.download_dir, f) for f in self.files)

    @property
    def source(self) -> str:
        return f"hf:{self.repo}" + (f"/{self.weights}" if self.weights else "") + f"@{self.commit}"


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


def format_size(size: int) -> str:
    """Decimal units like download tools, precise enough to see small files move."""
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _web_url(repo: str, endpoint: str | None) -> str:
    return f"{endpoint or 'https://huggingface.co'}/{repo}"


def parse_spec(spec: str) -> tuple[str, str | None, catalog.CatalogEntry | None]:
    """``alias`` | ``owner/name`` | ``owner/name:FILE-OR-QUANT`` → (repo or alias, GGUF selector, catalogue entry)."""
    spec = spec.strip()
    for prefix in ("hf:", "hf.co/", "https://huggingface.co/"):
        if spec.startswith(prefix):
            spec = spec[len(prefix):]
    entry = catalog.get(spec)
    if entry is not None:
        return spec, None, entry
    repo, _, selector = spec.partition(":")
    if not _REPO.match(repo):
        aliases = ", ".join(e.alias for e in catalog.CATALOG if not e.embedded)
        raise HubNotFound(f"unknown model {spec!r}: use a catalogue alias ({aliases}) "
                          "or a Hugging Face repo as owner/name")
    return repo, selector or None, None


def _preferred_format() -> str:
    """MLX where MLX has a GPU (Apple Silicon, CUDA builds), GGUF for llama.cpp everywhere else."""
    try:
        from pensieve_server.engine.select import resolve_engine

        return "mlx" if resolve_engine("auto", None) == "mlx" else "gguf"
    except Exception:  # noqa: BLE001 - no engine at all: MLX weights are the catalogue's default
        return "mlx"


def _default_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._").lower()[:80]
    return name or "model"


def _folder_name(repo: str, commit: str) -> str:
    return f"{repo.replace('/', '--')}@{commit}"


def _have(folder: Path, f: RemoteFile) -> int:
    done = folder / f.path
    if done.is_file():
        return min(done.stat().st_size, f.size)
    part = done.with_name(done.name + INCOMPLETE)
    return min(part.stat().st_size, f.size) if part.is_file() else 0


def _quant(filename: str) -> str:
    match = _QUANT.search(filename.rsplit("/", 1)[-1])
    return match.group(1).lower() if match else ""


def _gguf_groups(paths: list[str]) -> dict[str, list[str]]:
    """GGUF files grouped by model: a split file's parts together, projectors (mmproj) left out."""
    groups: dict[str, list[str]] = {}
    for path in sorted(paths):
        base = path.rsplit("/", 1)[-1].lower()
        if not base.endswith(".gguf") or "mmproj" in base:
            continue
        key = _SPLIT.sub(".gguf", path)
        groups.setdefault(key, []).append(path)
    return groups


def _pick_gguf(repo: str, paths: list[str], sizes: dict[str, int], selector: str | None) -> list[str]:
    groups = _gguf_groups(paths)
    if selector:
        wanted = selector.lower()
        groups = {k: v for k, v in groups.items()
                  if k.lower() == wanted or wanted in k.rsplit("/", 1)[-1].lower()}
        if not groups:
            available = ", ".join(sorted({_quant(k) or k for k in _gguf_groups(paths)})) or "none"
            raise HubNotFound(f"{repo} has no GGUF file matching {selector!r} (available: {available})")
    if not groups:
        raise ModelError(f"{repo} has no GGUF file")
    for quant in GGUF_PREFERENCE:
        for key, parts in groups.items():
            if _quant(key) == quant:
                return parts
    return min(groups.values(), key=lambda parts: sum(sizes.get(p, 0) for p in parts))


def _mlx_files(paths: list[str]) -> list[str]:
    keep = []
    for path in paths:
        base = path.rsplit("/", 1)[-1]
        if any(part.startswith(".") for part in path.split("/")) or path == MANIFEST:
            continue
        if base.lower().endswith(_SKIP_SUFFIXES):
            continue
        keep.append(path)
    return keep


def _looks_mlx(paths: list[str]) -> bool:
    return "config.json" in paths and any(p.endswith(".safetensors") and "/" not in p for p in paths)


def plan(store: ModelStore, spec: str, revision: str | None = None, name: str | None = None,
         prefer: str | None = None) -> PullPlan:
    """Resolve ``spec`` to a repo, a commit and the files to fetch; nothing is downloaded yet."""
    repo, selector, entry = parse_spec(spec)
    context = 0
    if entry is not None:
        if entry.embedded and name is None:
            raise ModelError(f"{entry.alias} is the embedded model shipped with Pensieve; it is always installed")
        fmt = prefer or _preferred_format()
        repo = entry.gguf_repo if fmt == "gguf" and entry.gguf_repo else entry.repo
        context = entry.context_length
        name = name or entry.alias
    if name is not None:
        validate_name(name)
        _check_free_name(store, name)
    revision = revision or "main"
    if _offline():
        return _offline_plan(store, repo, selector, revision, name, context)
    endpoint = _endpoint()
    with hub_errors(repo, revision, endpoint):
        from huggingface_hub import HfApi

        info = HfApi(endpoint=endpoint).model_info(repo, revision=revision, files_metadata=True)
    commit = info.sha or revision
    siblings = {s.rfilename: s for s in (info.siblings or [])}
    paths = list(siblings)
    sizes = {p: (s.lfs.size if s.lfs else s.size) or 0 for p, s in siblings.items()}
    if selector or (not _looks_mlx(paths) and _gguf_groups(paths)):
        fmt, chosen = "gguf", _pick_gguf(repo, paths, sizes, selector)
    elif _looks_mlx(paths):
        fmt, chosen = "mlx", _mlx_files(paths)
    else:
        raise ModelError(f"{repo} has neither MLX weights (config.json and *.safetensors) nor a GGUF file; "
                         "Pensieve cannot run it")
    cache = _hf_cache_dir()
    files = []
    for path in chosen:
        sibling = siblings[path]
        size = sizes[path]
        if sibling.size is None and sibling.lfs is None:
            size = _remote_size(repo, commit, path, endpoint)
        files.append(RemoteFile(path, size, sibling.lfs.sha256 if sibling.lfs else None,
                                None if sibling.lfs else sibling.blob_id, _cached(cache, repo, commit, path)))
    weights = chosen[0] if fmt == "gguf" else ""
    if name is None:
        name = _default_name(_SPLIT.sub("", weights.rsplit("/", 1)[-1]).removesuffix(".gguf") if weights
                             else repo.rsplit("/", 1)[-1])
        validate_name(name)
        _check_free_name(store, name)
    folder = store.root / DOWNLOADS / _folder_name(repo, commit)
    return PullPlan(repo, revision, commit, name, fmt, tuple(files), weights, context, folder, endpoint)


def _check_free_name(store: ModelStore, name: str) -> None:
    if name == EMBEDDED_NAME or (store.folder(name) / MANIFEST).exists():
        raise ModelError(f"a model named {name!r} already exists; pick another --name or `pensieve models rm {name}`")


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


def _offline_plan(store: ModelStore, repo: str, selector: str | None, revision: str, name: str | None,
                  context: int) -> PullPlan:
    """HF_HUB_OFFLINE: install from a finished download of ours, or from the Hugging Face cache."""
    downloads = store.root / DOWNLOADS
    for plan_file in sorted(downloads.glob(f"{repo.replace('/', '--')}@*/{PLAN_FILE}")):
        try:
            saved = _load_plan(plan_file)
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if revision not in (saved.revision, saved.commit) and not saved.commit.startswith(revision):
            continue
        if selector and selector.lower() not in saved.weights.lower():
            continue
        if all(_have(saved.download_dir, f) == f.size and (saved.download_dir / f.path).is_file()
               for f in saved.files):
            return replace(saved, name=name or saved.name, offline=True,
                           context_length=context or saved.context_length)
    snapshot = _cache_snapshot(repo, revision)
    if snapshot is None:
        raise ModelError(f"offline mode is on (HF_HUB_OFFLINE) and {repo} is not downloaded or cached yet; "
                         "unset HF_HUB_OFFLINE to download it")
    paths = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    sizes = {p: (snapshot / p).stat().st_size for p in paths}
    if selector or (not _looks_mlx(paths) and _gguf_groups(paths)):
        fmt, chosen = "gguf", _pick_gguf(repo, paths, sizes, selector)
    elif _looks_mlx(paths):
        fmt, chosen = "mlx", _mlx_files(paths)
    else:
        raise ModelError(f"offline mode is on (HF_HUB_OFFLINE) and the cached copy of {repo} is not a model "
                         "Pensieve can run; unset HF_HUB_OFFLINE to download it")
    files = []
    for path in chosen:
        blob = Path(os.path.realpath(snapshot / path)).name  # LFS blobs are named by their SHA-256
        sha = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None
        files.append(RemoteFile(path, sizes[path], sha, None, str(snapshot / path)))
    weights = chosen[0] if fmt == "gguf" else ""
    commit = snapshot.name
    if name is None:
        name = _default_name(_SPLIT.sub("", weights.rsplit("/", 1)[-1]).removesuffix(".gguf") if weights
                             else repo.rsplit("/", 1)[-1])
        validate_name(name)
        _check_free_name(store, name)
    return PullPlan(repo, revision, commit, name, fmt, tuple(files), weights, context,
                    downloads / _folder_name(repo, commit), None, True)


def _cache_snapshot(repo: str, revision: str) -> Path | None:
    cache = _hf_cache_dir() / f"models--{repo.replace('/', '--')}"
    commit = revision
    ref = cache / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    snapshot = cache / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _save_plan(p: PullPlan) -> None:
    data = asdict(p)
    data["download_dir"] = str(p.download_dir)
    data["files"] = [{**asdict(f), "cached": None} for f in p.files]
    tmp = p.download_dir / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, p.download_dir / PLAN_FILE)


def _load_plan(path: Path) -> PullPlan:
    data = json.loads(path.read_text(encoding="utf-8"))
    files = tuple(RemoteFile(**f) for f in data.pop("files"))
    data["download_dir"] = path.parent
    return PullPlan(files=files, **{k: v for k, v in data.items() if k in PullPlan.__dataclass_fields__})


# -- errors ----------------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(__import__(module).TransportError)
    with contextlib.suppress(ImportError):
        import requests

        errors += [requests.ConnectionError, requests.Timeout]
    return tuple(errors)


@contextlib.contextmanager
def hub_errors(repo: str, revision: str, endpoint: str | None, path: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into one-line ModelErrors that say what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{repo}/{path}" if path else repo
    try:
        yield
    except ModelError:
        raise
    except HFValidationError:
        raise HubNotFound(f"{repo!r} is not a valid Hugging Face repo name (owner/name)") from None
    except GatedRepoError:
        raise ModelError(f"{repo} is gated: accept its terms at {_web_url(repo, endpoint)} and set HF_TOKEN "
                         "to a token of that account") from None
    except RevisionNotFoundError:
        raise HubNotFound(f"revision {revision!r} not found in {repo}; check --revision") from None
    except RemoteEntryNotFoundError:
        raise HubNotFound(f"{what} not found on the Hub at revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise HubNotFound(f"{repo} not found on Hugging Face; check the name or pass HF_TOKEN for private repos")\
            from None
    except OfflineModeIsEnabled:
        raise ModelError(f"offline mode is on (HF_HUB_OFFLINE) and {repo} is not downloaded yet; "
                         "unset HF_HUB_OFFLINE to download it") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401:
            raise ModelError(f"Hugging Face refused {what} (HTTP 401): HF_TOKEN missing or invalid") from None
        if status == 403:
            raise ModelError(f"Hugging Face refused {what} (HTTP 403): your HF_TOKEN has no access to it") from None
        if status == 404:
            raise HubNotFound(f"{what} not found on Hugging Face; check the name or pass HF_TOKEN for private "
                              "repos") from None
        if status == 416:
            raise ModelError(f"the server rejected resuming {what} (HTTP 416); run the same command again "
                             "to download it from the start") from None
        raise ModelError(f"Hugging Face answered HTTP {status} for {what}; run the same command again "
                         "later to resume") from None
    except LocalEntryNotFoundError:
        raise ModelError(f"network lost while downloading {what}; run the same command again to resume") from None
    except _network_errors():
        raise ModelError(f"network lost while downloading {what}; run the same command again to resume") from None
    except OSError as exc:
        if "Consistency check failed" in str(exc):  # http_get: fewer bytes than announced
            raise ModelError(f"network lost while downloading {what}; run the same command again to resume")\
                from None
        raise


# -- download --------------------------------------------------------------------------------------


class _Tracker:
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


class _Bar:
    """The ``tqdm_class`` handed to ``http_get``: it is only ever constructed, entered and updated."""

    def __init__(self, tracker: _Tracker, *args: Any, initial: int = 0, **kwargs: Any) -> None:
        self.tracker = tracker
        if initial != tracker.file_done:  # the server ignored our Range: the file starts over
            tracker.advance(initial - tracker.file_done)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        self.tracker.advance(int(n or 0))

    def close(self) -> None:
        return None


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


def _fetch(p: PullPlan, f: RemoteFile, dest: Path, tracker: _Tracker) -> None:
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
                         displayed_filename=f.path, tqdm_class=functools.partial(_Bar, tracker))
        else:
            part.touch()
    os.replace(part, dest)
    tracker.finish()


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = urlparse(url)
    return parsed.scheme, (parsed.hostname or "").lower(), parsed.port


def _copy_cached(f: RemoteFile, dest: Path, tracker: _Tracker) -> None:
    assert f.cached is not None
    tracker.start("download", f.path, f.size)
    part = dest.with_name(dest.name + INCOMPLETE)
    shutil.copyfile(f.cached, part)
    os.replace(part, dest)
    tracker.finish()


def _hash_file(path: Path, algorithm: str, tracker: _Tracker, prefix: bytes = b"") -> str:
    digest = hashlib.new(algorithm)
    digest.update(prefix)
    with open(path, "rb") as handle:
        for chunk in iter(functools.partial(handle.read, HASH_CHUNK), b""):
            digest.update(chunk)
            tracker.advance(len(chunk))
    return digest.hexdigest()


def _verify(p: PullPlan, tracker: _Tracker) -> None:
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


def download(store: ModelStore, p: PullPlan, progress: ProgressCallback | None = None) -> ModelEntry:
    """Fetch (or resume) the plan's files, verify them and install the model; the manifest comes last."""
    p.download_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(p.download_dir)
    try:
        if not p.offline:
            _prune_stale(p)
        _check_free_name(store, p.name)
        _check_space(p)
        _save_plan(p)
        tracker = _Tracker(p, progress)
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
        _verify(p, tracker)
        entry = _describe(p)
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


# -- checking what was downloaded ------------------------------------------------------------------


def _describe(p: PullPlan) -> ModelEntry:
    """Check the folder is a model Pensieve runs and read its architecture and context length."""
    folder = p.download_dir
    size = p.total_bytes
    if p.format == "gguf":
        path = folder / p.weights
        meta = read_gguf_metadata(path, f"{p.repo}/{p.weights}")
        arch = str(meta.get("general.architecture") or "")
        ctx = p.context_length or int(meta.get(f"{arch}.context_length") or 0) or DEFAULT_CONTEXT
        return ModelEntry(p.name, "gguf", str(path), p.source, ctx, size, arch)
    config = check_mlx_folder(folder, p.repo)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    ctx = p.context_length
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
        value = config.get(key) or text.get(key)
        if not ctx and isinstance(value, int) and value > 0:
            ctx = value
    return ModelEntry(p.name, "mlx", str(folder), p.source, ctx or DEFAULT_CONTEXT, size,
                      str(config.get("model_type") or text.get("model_type") or ""))


def check_mlx_folder(folder: Path, label: str) -> dict[str, Any]:
    """An MLX model folder: config.json, readable *.safetensors (all shards of an index), a tokenizer."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ModelError(f"{label} is not an MLX model: config.json is missing or not JSON") from None
    if not isinstance(config, dict):
        raise ModelError(f"{label} is not an MLX model: config.json is not an object")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelError(f"{label} is not an MLX model: it has no *.safetensors weights")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{label}: model.safetensors.index.json is not readable") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ModelError(f"{label} is incomplete: missing weight shards {', '.join(missing)}")
    for path in weights:
        _check_safetensors(path, f"{label}/{path.name}")
    if not any((folder / t).is_file() for t in _TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        raise ModelError(f"{label} is not an MLX model: it has no tokenizer (tokenizer.json or tokenizer.model)")
    return config


def _check_safetensors(path: Path, label: str) -> None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length <= 0 or length > size - 8 or length > 100_000_000:
                raise ValueError
            header = json.loads(handle.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end > size:
            raise ValueError
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError):
        raise ModelError(f"{label} is not a valid safetensors file") from None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}


def _read(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated")
    return struct.unpack(fmt, data)[0]


def _read_string(handle: BinaryIO) -> str:
    length = _read(handle, "<Q")
    if length > 1 << 24:
        raise ValueError("string too long")
    return handle.read(length).decode("utf-8", errors="replace")


def _read_value(handle: BinaryIO, vtype: int) -> Any:
    if vtype in _GGUF_SCALARS:
        return _read(handle, _GGUF_SCALARS[vtype])
    if vtype == 8:
        return _read_string(handle)
    if vtype == 9:  # arrays (the vocabulary...): skipped, we never need them
        item, count = _read(handle, "<I"), _read(handle, "<Q")
        if item in _GGUF_SCALARS:
            handle.seek(count * struct.calcsize(_GGUF_SCALARS[item]), os.SEEK_CUR)
        else:
            for _ in range(count):
                _read_value(handle, item)
        return None
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf_metadata(path: Path, label: str) -> dict[str, Any]:
    """The GGUF magic is required; the key/values are read until the architecture and context length."""
    meta: dict[str, Any] = {}
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelError(f"{label} is not a GGUF file")
        try:
            version = _read(handle, "<I")
            if version < 2:
                return meta
            _read(handle, "<Q")  # tensor count
            for _ in range(min(_read(handle, "<Q"), 1_000_000)):
                key = _read_string(handle)
                meta[key] = _read_value(handle, _read(handle, "<I"))
                arch = meta.get("general.architecture")
                if arch and f"{arch}.context_length" in meta:
                    break
        except (ValueError, struct.error, OSError):
            pass  # the metadata is a nicety; llama.cpp has the last word on the file
    return meta
