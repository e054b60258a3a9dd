"""Importing a model that is already on disk (``pensieve models import PATH``) into the model store.

A GGUF file is checked before a byte is copied by the one strict reader (:mod:`.formats.gguf`), so
a truncated download or a file that only looks like a GGUF is refused with one line instead of
crashing the engine later, and its architecture must be one llama.cpp runs as a chat model. A local
MLX folder is checked the way ``models pull`` checks a download (:mod:`.formats.mlx`). The copy
happens inside :meth:`ModelStore.install`, so a failure or Ctrl-C part-way leaves nothing in the store.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.models.formats.engines import check_architecture
from pensieve_server.models.formats.gguf import gguf_stem, read_gguf_info, split_parts
from pensieve_server.models.formats.mlx import check_mlx_folder, mlx_architecture, mlx_context
from pensieve_server.models.store import (
    MANIFEST,
    ModelEntry,
    ModelError,
    ModelNotFound,
    ModelStore,
    name_from,
    validate_name,
)

COPY_CHUNK = 8 * 1024 * 1024
MLX_SUFFIXES = (".json", ".safetensors", ".model", ".tiktoken", ".txt", ".jinja")

Progress = Callable[[int, int], None]  # (bytes copied, bytes in all)


def _mlx_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(MLX_SUFFIXES)
                  and not p.name.startswith("."))


# -- copying into the store ------------------------------------------------------------------------

def default_name(path: Path) -> str:
    """A store name from a file or folder name: ``Qwen2.5-7B-Instruct-Q4_K_M.gguf`` → ``qwen2.5-7b-instruct-q4_k_m``."""
    return name_from(gguf_stem(path.name))


def _copy(sources: list[Path], dest: Path, progress: Progress | None) -> None:
    """Copy files into ``dest`` in chunks, reporting bytes; fsynced so the manifest never outlives them."""
    total = sum(p.stat().st_size for p in sources)
    free = shutil.disk_usage(dest).free
    if total > free:
        raise ModelError(f"not enough disk space in {dest.parent}: the model needs {total} bytes, {free} are free")
    done = 0
    for source in sources:
        with open(source, "rb") as src, open(dest / source.name, "wb") as out:
            while chunk := src.read(COPY_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
    if progress is not None and not sources:
        progress(0, 0)


def import_model(store: ModelStore, path: Path | str, name: str | None = None,
                 progress: Progress | None = None) -> ModelEntry:
    """Check ``path`` (a .gguf file or an MLX folder) and copy it into the store as ``name``."""
    # Not resolved: a Hugging Face cache links names to blobs/<sha256>, and the name is what we want.
    source = Path(path).expanduser().absolute()
    if not source.exists():
        raise ModelNotFound(f"{path} does not exist")
    name = validate_name(name or default_name(source))
    if name == EMBEDDED_NAME or (store.folder(name) / MANIFEST).exists():
        raise ModelError(f"a model named {name!r} already exists; pick another --name or `pensieve models rm {name}`")
    if source.is_dir():
        return _import_mlx(store, source, name, progress)
    if not source.is_file():
        raise ModelError(f"{path} is neither a file nor a folder")
    return _import_gguf(store, source, name, progress)


def _import_gguf(store: ModelStore, source: Path, name: str, progress: Progress | None) -> ModelEntry:
    info = read_gguf_info(source)
    check_architecture(info.architecture, str(source))
    parts = split_parts(source, info)
    size = sum(p.stat().st_size for p in parts)

    def build(staging: Path) -> ModelEntry:
        _copy(parts, staging, progress)
        copied = staging / source.name
        if copied.stat().st_size != source.stat().st_size:
            raise ModelError(f"{source} changed while it was being copied; import it again")
        return ModelEntry(name, "gguf", str(copied), f"file:{source}", info.context_length, size, info.architecture)

    return store.install(name, build)


def _import_mlx(store: ModelStore, source: Path, name: str, progress: Progress | None) -> ModelEntry:
    if not (source / "config.json").is_file() and any(source.glob("*.gguf")):
        raise ModelError(f"{source} is a folder of GGUF files; import the .gguf file itself")
    config = check_mlx_folder(source, str(source))
    files = _mlx_files(source)
    arch = mlx_architecture(config)

    def build(staging: Path) -> ModelEntry:
        _copy(files, staging, progress)
        size = sum(p.stat().st_size for p in files)
        return ModelEntry(name, "mlx", str(staging), f"file:{source}", mlx_context(config), size, arch)

    return store.install(name, build)
