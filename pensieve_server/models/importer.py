"""Importing a model that is already on disk (``pensieve models import PATH``) into the model store.

A GGUF file is checked before a byte is copied: magic, version, every metadata key/value, every
tensor description and that each tensor's data lies inside the file, so a truncated download or a
file that only looks like a GGUF is refused with one line instead of crashing the engine later. The
architecture must be one llama.cpp runs as a chat model. A local MLX folder (config.json,
*.safetensors, a tokenizer) is checked the way ``models pull`` checks a download. The copy happens
inside :meth:`ModelStore.install`, so a failure or Ctrl-C part-way leaves nothing in the store.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.models.store import (
    MANIFEST,
    ModelEntry,
    ModelError,
    ModelNotFound,
    ModelStore,
    validate_name,
)

GGUF_MAGIC = b"GGUF"
DEFAULT_CONTEXT = 4096  # when a model does not say (the GGUF spec makes context_length required)
DEFAULT_ALIGNMENT = 32
COPY_CHUNK = 8 * 1024 * 1024
MAX_STRING = 1 << 24  # no metadata string (chat templates included) comes near 16 MiB
MAX_COUNT = 1 << 32  # keys, tensors or array items: more means a corrupt count, not a real model
MAX_DIMS = 8  # GGML_MAX_DIMS is 4; a little slack for future versions

# Architectures (``general.architecture``) that llama.cpp runs as text-generating models: the
# families of llama.cpp's LLM_ARCH_NAMES that Pensieve can serve. Mistral, Mixtral, SmolLM2,
# CodeLlama and many fine-tunes are stored as "llama". Only "llama" is also converted for MLX.
LLAMACPP_ARCHITECTURES = frozenset({
    "llama", "llama4", "deci", "mistral3", "mistral4",
    "qwen", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "qwen3next",
    "phi2", "phi3", "phimoe",
    "gemma", "gemma2", "gemma3", "gemma3n",
    "granite", "granitemoe", "granitehybrid",
    "starcoder", "starcoder2", "smollm3", "olmo", "olmo2", "olmoe", "deepseek", "deepseek2",
    "falcon", "falcon-h1", "gpt2", "gptj", "gptneox", "mpt", "baichuan", "refact", "bloom", "stablelm",
    "internlm2", "minicpm", "minicpm3", "command-r", "cohere2", "exaone", "exaone4", "chatglm", "glm4",
    "glm4moe", "gpt-oss", "lfm2", "ernie4_5", "ernie4_5-moe", "hunyuan-moe", "hunyuan-dense", "seed_oss",
    "nemotron", "arcee", "apertus", "openelm", "orion", "xverse", "jais", "bitnet", "dbrx", "arctic",
    "codeshell", "plamo", "plamo2", "mamba", "mamba2", "jamba", "rwkv6", "rwkv7", "bailingmoe",
    "dots1", "smallthinker", "plm", "chameleon",
})
MLX_CONVERTIBLE = frozenset({"llama"})
# Models in GGUF files that are not chat models at all: said plainly rather than "unsupported".
NOT_CHAT_MODELS = {
    "clip": "a vision projector (mmproj) that belongs beside a chat model, not a model of its own",
    "bert": "an embedding model", "nomic-bert": "an embedding model", "nomic-bert-moe": "an embedding model",
    "jina-bert-v2": "an embedding model", "jina-bert-v3": "an embedding model", "neo-bert": "an embedding model",
    "modern-bert": "an embedding model", "eurobert": "an embedding model", "gemma-embedding": "an embedding model",
    "t5encoder": "a text encoder", "wavtokenizer-dec": "an audio decoder",
}
# (elements per block, bytes per block) of the GGML tensor types, from ggml-common.h; types not
# listed are only checked to start inside the file.
GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
}
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MIN_BYTES = {**{t: struct.calcsize(f) for t, f in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
MLX_SUFFIXES = (".json", ".safetensors", ".model", ".tiktoken", ".txt", ".jinja")

Progress = Callable[[int, int], None]  # (bytes copied, bytes in all)


@dataclass(frozen=True)
class GgufInfo:
    """What Pensieve needs from a GGUF header: the architecture, its context and where the data ends."""

    version: int
    architecture: str
    context_length: int
    tensor_count: int
    metadata: dict[str, Any]
    data_end: int  # the end of the last tensor's data (0: unknown types, not checked)


class _Corrupt(Exception):
    """The file's bytes do not make a GGUF; the message says where it went wrong."""


# -- GGUF ------------------------------------------------------------------------------------------

class _Reader:
    """Bounds-checked little-endian reads, so a garbage length cannot make us read (or seek) forever."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.size = size

    def value(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.handle.read(size)
        if len(data) != size:
            raise _Corrupt("the file ends inside its header (truncated)")
        return struct.unpack(fmt, data)[0]

    def count(self, what: str) -> int:
        value = self.value("<Q")
        if value > MAX_COUNT:
            raise _Corrupt(f"implausible {what} ({value})")
        return value

    def string(self) -> str:
        length = self.value("<Q")
        if length > MAX_STRING or self.handle.tell() + length > self.size:
            raise _Corrupt("a metadata string runs past the end of the file (truncated)")
        data = self.handle.read(length)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt("a metadata string is not UTF-8") from None

    def room(self, count: int, each: int, what: str) -> None:
        """Refuse a count that cannot fit in the rest of the file before looping over it."""
        if self.handle.tell() + count * each > self.size:
            raise _Corrupt(f"{what} runs past the end of the file (truncated)")

    def skip(self, length: int) -> None:
        if self.handle.tell() + length > self.size:
            raise _Corrupt("a metadata array runs past the end of the file (truncated)")
        self.handle.seek(length, os.SEEK_CUR)

    def item(self, vtype: int, keep: bool) -> Any:
        if vtype in _SCALARS:
            return self.value(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item, length = self.value("<I"), self.count("array length")
            self.room(length, _MIN_BYTES.get(item, 1), "a metadata array")
            if item in _SCALARS and not keep:
                self.skip(length * struct.calcsize(_SCALARS[item]))
                return None
            if item not in _SCALARS and item not in (_STRING, _ARRAY):
                raise _Corrupt(f"unknown metadata value type {item}")
            values = [self.item(item, keep) for _ in range(length)]
            return values if keep else None
        raise _Corrupt(f"unknown metadata value type {vtype}")


def _tensor_bytes(ggml_type: int, dims: list[int]) -> int | None:
    block = GGML_BLOCKS.get(ggml_type)
    if block is None:
        return None
    elements = 1
    for dim in dims:
        elements *= dim
    per_block, block_bytes = block
    if elements % per_block:
        raise _Corrupt(f"a tensor of {elements} elements does not fill whole blocks of type {ggml_type}")
    return elements // per_block * block_bytes


def read_gguf_info(path: Path) -> GgufInfo:
    """Parse and check a GGUF file's header; ModelError (one line) when it is not a usable GGUF."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            return _parse(_Reader(handle, size), path)
    except _Corrupt as exc:
        raise ModelError(f"{path} is not a valid GGUF file: {exc}") from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse(reader: _Reader, path: Path) -> GgufInfo:
    if reader.handle.read(4) != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    version = reader.value("<I")
    if version not in (2, 3) and int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
        raise ModelError(f"{path} is a big-endian GGUF; Pensieve's llama.cpp reads little-endian files only")
    if version not in (2, 3):
        raise ModelError(f"{path} is GGUF version {version}; llama.cpp reads versions 2 and 3 "
                         "(convert it again with a current llama.cpp)")
    tensor_count, kv_count = reader.count("tensor count"), reader.count("metadata count")
    reader.room(kv_count, 13, "the metadata")  # key length, type, at least one byte of value
    reader.room(tensor_count, 24, "the tensor list")  # name length, dims, type, offset
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.item(reader.value("<I"), keep=False)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment is {alignment!r}, not a power of two")
    tensors: list[tuple[int, int | None]] = []
    for _ in range(tensor_count):
        reader.string()
        n_dims = reader.value("<I")
        if n_dims > MAX_DIMS:
            raise _Corrupt(f"a tensor has {n_dims} dimensions")
        dims = [reader.value("<Q") for _ in range(n_dims)]
        ggml_type, offset = reader.value("<I"), reader.value("<Q")
        tensors.append((offset, _tensor_bytes(ggml_type, dims)))
    start = reader.handle.tell()
    data_start = (start + alignment - 1) // alignment * alignment
    data_end = 0
    for offset, nbytes in tensors:
        end = data_start + offset + (nbytes or 0)
        if end > reader.size or (nbytes is None and data_start + offset >= reader.size):
            raise _Corrupt(f"its tensor data ends at byte {end} but the file has {reader.size} bytes (truncated)")
        data_end = max(data_end, end)
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _Corrupt("general.architecture is missing")
    context = metadata.get(f"{arch}.context_length")
    context = context if isinstance(context, int) and context > 0 else DEFAULT_CONTEXT
    return GgufInfo(version, arch, context, tensor_count, metadata, data_end)


def check_architecture(arch: str, label: str) -> None:
    """Refuse what llama.cpp cannot run as a chat model, saying what the file is when we know."""
    if arch in LLAMACPP_ARCHITECTURES:
        return
    if arch in NOT_CHAT_MODELS:
        raise ModelError(f"{label} is {NOT_CHAT_MODELS[arch]} (architecture {arch!r}), not a chat model "
                         "Pensieve can serve")
    families = "llama (also Mistral, SmolLM2), qwen2, qwen3, phi3, gemma3, deepseek2, gpt-oss and others"
    raise ModelError(f"{label} has architecture {arch!r}, which Pensieve's llama.cpp engine does not run "
                     f"(supported: {families})")


def _split_parts(path: Path, info: GgufInfo) -> list[Path]:
    """All files of a split GGUF (``name-00001-of-00003.gguf``), starting with ``path``, the first."""
    count = info.metadata.get("split.count")
    if not isinstance(count, int) or count <= 1:
        return [path]
    match = _SPLIT.match(path.name)
    if not match or int(match.group("part")) != 1:
        raise ModelError(f"{path} is part of a split GGUF of {count} files; import its first file "
                         f"(the one ending in -00001-of-{count:05d}.gguf)")
    parts = [path.with_name(f"{match.group('stem')}-{n:05d}-of-{count:05d}.gguf") for n in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelError(f"{path} is split in {count} files, but {', '.join(missing)} is not beside it")
    for part in parts[1:]:
        read_gguf_info(part)
    return parts


# -- MLX -------------------------------------------------------------------------------------------

def _mlx_context(config: dict[str, Any]) -> int:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
        value = config.get(key) or text.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT


def _mlx_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(MLX_SUFFIXES)
                  and not p.name.startswith("."))


# -- copying into the store ------------------------------------------------------------------------

def default_name(path: Path) -> str:
    """A store name from a file or folder name: ``Qwen2.5-7B-Instruct-Q4_K_M.gguf`` → ``qwen2.5-7b-instruct-q4_k_m``."""
    stem = path.name
    match = _SPLIT.match(stem)
    stem = match.group("stem") if match else stem.removesuffix(".gguf").removesuffix(".GGUF")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._").lower()[:80]
    return name or "model"


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
    parts = _split_parts(source, info)
    size = sum(p.stat().st_size for p in parts)

    def build(staging: Path) -> ModelEntry:
        _copy(parts, staging, progress)
        copied = staging / source.name
        if copied.stat().st_size != source.stat().st_size:
            raise ModelError(f"{source} changed while it was being copied; import it again")
        return ModelEntry(name, "gguf", str(copied), f"file:{source}", info.context_length, size, info.architecture)

    return store.install(name, build)


def _import_mlx(store: ModelStore, source: Path, name: str, progress: Progress | None) -> ModelEntry:
    from pensieve_server.models.hub import check_mlx_folder

    if not (source / "config.json").is_file() and any(source.glob("*.gguf")):
        raise ModelError(f"{source} is a folder of GGUF files; import the .gguf file itself")
    config = check_mlx_folder(source, str(source))
    files = _mlx_files(source)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    arch = str(config.get("model_type") or text.get("model_type") or "")

    def build(staging: Path) -> ModelEntry:
        _copy(files, staging, progress)
        size = sum(p.stat().st_size for p in files)
        return ModelEntry(name, "mlx", str(staging), f"file:{source}", _mlx_context(config), size, arch)

    return store.install(name, build)
