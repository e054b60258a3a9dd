"""The one GGUF reader: a strict check of a file's header, and what Pensieve needs from it.

Magic, version, every metadata key/value, every tensor description and that each tensor's data lies
inside the file are checked, so a truncated download or a file that only looks like a GGUF is
refused with one line instead of crashing an engine later. Lengths and counts are bounded before
they are used, so a garbage header cannot make us read (or seek) forever. Import, pull and the
GGUF→MLX conversion all read files through :func:`read_gguf_info`.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pensieve_server.models.store import ModelError

GGUF_MAGIC = b"GGUF"
DEFAULT_CONTEXT = 4096  # when a model does not say (the GGUF spec makes context_length required)
DEFAULT_ALIGNMENT = 32
MAX_STRING = 1 << 24  # no metadata string (chat templates included) comes near 16 MiB
MAX_COUNT = 1 << 32  # keys, tensors or array items: more means a corrupt count, not a real model
MAX_DIMS = 8  # GGML_MAX_DIMS is 4; a little slack for future versions

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
# The name of one file of a split GGUF: ``<stem>-00001-of-00003.gguf``.
SPLIT_SUFFIX = re.compile(r"-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class GgufInfo:
    """What Pensieve needs from a GGUF header: the architecture, its context and where the data ends."""

    version: int
    architecture: str
    context_length: int
    tensor_count: int
    metadata: dict[str, Any]  # arrays (the vocabulary...) only when read with keep_arrays
    data_end: int  # the end of the last tensor's data (0: unknown types, not checked)


class GgufError(ModelError):
    """A file that starts like a GGUF but is not one llama.cpp can read; ``problem`` says why, without the name."""

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


class _Corrupt(Exception):
    """The file's bytes do not make a GGUF; the message says where it went wrong."""


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


def read_gguf_info(path: Path, label: str | None = None, keep_arrays: bool = False) -> GgufInfo:
    """Parse and check a GGUF file's header; ModelError (one line, naming ``label``) when it is not usable.

    ``keep_arrays`` also returns the metadata arrays (the vocabulary, for the MLX conversion); they
    are skipped otherwise, which keeps a check of a large model's header fast.
    """
    label = label or str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            return _parse(_Reader(handle, size), label, keep_arrays)
    except _Corrupt as exc:
        raise GgufError(f"{label} is not a valid GGUF file: {exc}", str(exc)) from None
    except OSError as exc:
        raise ModelError(f"cannot read {label}: {exc.strerror or exc}") from None


def _parse(reader: _Reader, label: str, keep_arrays: bool) -> GgufInfo:
    if reader.handle.read(4) != GGUF_MAGIC:
        raise ModelError(f"{label} is not a GGUF file (it does not start with the GGUF magic bytes)")
    version = reader.value("<I")
    if version not in (2, 3) and int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
        raise GgufError(f"{label} is a big-endian GGUF; Pensieve's llama.cpp reads little-endian files only",
                        "it is a big-endian GGUF (llama.cpp reads little-endian files only)")
    if version not in (2, 3):
        raise GgufError(f"{label} is GGUF version {version}; llama.cpp reads versions 2 and 3 "
                        "(convert it again with a current llama.cpp)",
                        f"it is GGUF version {version} (llama.cpp reads versions 2 and 3)")
    tensor_count, kv_count = reader.count("tensor count"), reader.count("metadata count")
    reader.room(kv_count, 13, "the metadata")  # key length, type, at least one byte of value
    reader.room(tensor_count, 24, "the tensor list")  # name length, dims, type, offset
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.item(reader.value("<I"), keep=keep_arrays)
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


# -- split files -----------------------------------------------------------------------------------

def split_name(filename: str) -> tuple[str, int, int] | None:
    """``(stem, part, count)`` of one file of a split GGUF (``stem-00001-of-00003.gguf``); None otherwise."""
    match = SPLIT_SUFFIX.search(filename)
    if match is None or match.start() == 0:
        return None
    return filename[:match.start()], int(match.group("part")), int(match.group("count"))


def gguf_stem(filename: str) -> str:
    """A GGUF file's name without ``.gguf``, and without ``-00001-of-00003`` for a part of a split one."""
    split = split_name(filename)
    return split[0] if split else filename.removesuffix(".gguf").removesuffix(".GGUF")


def split_parts(path: Path, info: GgufInfo, label: str | None = None) -> list[Path]:
    """All files of a split GGUF, starting with ``path`` (the first), each checked; ``[path]`` when not split."""
    label = label or str(path)
    count = info.metadata.get("split.count")
    if not isinstance(count, int) or count <= 1:
        return [path]
    name = split_name(path.name)
    if name is None or name[1] != 1:
        raise ModelError(f"{label} is part of a split GGUF of {count} files; import its first file "
                         f"(the one ending in -00001-of-{count:05d}.gguf)")
    parts = [path.with_name(f"{name[0]}-{n:05d}-of-{count:05d}.gguf") for n in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelError(f"{label} is split in {count} files, but {', '.join(missing)} is not beside it")
    for part in parts[1:]:
        read_gguf_info(part)
    return parts
