"""Planning a pull: a spec (catalogue alias or ``owner/name[:quant]``) becomes a repo, a commit and
the files to fetch, before a byte is downloaded, so the CLI can show it and ask first.

The plan is saved beside the files (``<models>/.downloads/<owner>--<name>@<commit>``), so an offline
re-run (HF_HUB_OFFLINE) can install a finished download; otherwise online and offline plans take the
same path, from a :class:`~.listing.Listing` of the Hub or of the Hugging Face cache.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pensieve_server.models import catalog
from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.models.formats.gguf import gguf_stem
from pensieve_server.models.hub.errors import HubNotFound
from pensieve_server.models.hub.files import choose_files
from pensieve_server.models.hub.listing import (
    RemoteFile,
    cache_listing,
    hub_endpoint,
    hub_listing,
    offline_mode,
)
from pensieve_server.models.store import MANIFEST, ModelError, ModelStore, name_from, validate_name

DOWNLOADS = ".downloads"
PLAN_FILE = ".pensieve-pull.json"  # the plan, beside the files: lets an offline re-run install them
LOCK_FILE = ".lock"
INCOMPLETE = ".incomplete"
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
        from pensieve_server.engine.factory import resolve_engine

        return "mlx" if resolve_engine("auto", None) == "mlx" else "gguf"
    except Exception:  # noqa: BLE001 - no engine at all: MLX weights are the catalogue's default
        return "mlx"


def _folder_name(repo: str, commit: str) -> str:
    return f"{repo.replace('/', '--')}@{commit}"


def _have(folder: Path, f: RemoteFile) -> int:
    done = folder / f.path
    if done.is_file():
        return min(done.stat().st_size, f.size)
    part = done.with_name(done.name + INCOMPLETE)
    return min(part.stat().st_size, f.size) if part.is_file() else 0


def check_free_name(store: ModelStore, name: str) -> None:
    if name == EMBEDDED_NAME or (store.folder(name) / MANIFEST).exists():
        raise ModelError(f"a model named {name!r} already exists; pick another --name or `pensieve models rm {name}`")


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
        check_free_name(store, name)
    revision = revision or "main"
    offline = offline_mode()
    if offline:
        finished = _finished_download(store, repo, selector, revision)
        if finished is not None:
            return replace(finished, name=name or finished.name, offline=True,
                           context_length=context or finished.context_length)
        listing, endpoint = cache_listing(repo, revision), None
    else:
        endpoint = hub_endpoint()
        listing = hub_listing(repo, revision, endpoint)
    fmt, chosen = choose_files(repo, listing.sizes, selector, listing.not_a_model)
    files = tuple(listing.describe(path) for path in chosen)
    weights = chosen[0] if fmt == "gguf" else ""
    if name is None:
        name = name_from(gguf_stem(weights.rsplit("/", 1)[-1]) if weights else repo.rsplit("/", 1)[-1])
        validate_name(name)
        check_free_name(store, name)
    folder = store.root / DOWNLOADS / _folder_name(repo, listing.commit)
    return PullPlan(repo, revision, listing.commit, name, fmt, files, weights, context, folder, endpoint, offline)


def _finished_download(store: ModelStore, repo: str, selector: str | None, revision: str) -> PullPlan | None:
    """HF_HUB_OFFLINE: the saved plan of a download of ours that has every file, if there is one."""
    for plan_file in sorted((store.root / DOWNLOADS).glob(f"{repo.replace('/', '--')}@*/{PLAN_FILE}")):
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
            return saved
    return None


def save_plan(p: PullPlan) -> None:
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

