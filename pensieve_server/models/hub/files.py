"""Which of a repo's files make the model: MLX weights with their config and tokenizer, or one GGUF
quantisation (all parts of a split one), the usual 4-bit one unless a selector says otherwise."""

from __future__ import annotations

import re

from pensieve_server.models.formats.gguf import SPLIT_SUFFIX
from pensieve_server.models.hub.errors import HubNotFound
from pensieve_server.models.store import MANIFEST, ModelError

# Best first, for GGUF repos with many quantisations: the usual 4-bit quality/size sweet spot.
GGUF_PREFERENCE = ("q4_k_m", "q4_k_s", "q4_0", "iq4_xs", "q4_1", "q4", "q5_k_m", "q5_0", "q6_k", "q8_0",
                   "bf16", "f16", "fp16", "f32")
_QUANT = re.compile(r"(?:^|[-_.])((?:i?q\d[a-z0-9_]*?)|bf16|fp?16|f32)(?:-\d{5}-of-\d{5})?\.gguf$", re.IGNORECASE)
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".ckpt", ".gguf",
                  ".png", ".jpg", ".jpeg", ".gif", ".webp")


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
        key = SPLIT_SUFFIX.sub(".gguf", path)
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


def choose_files(repo: str, sizes: dict[str, int], selector: str | None, not_a_model: str) -> tuple[str, list[str]]:
    """``(format, files)`` to fetch from a repo's files and sizes; ModelError ``not_a_model`` when it has neither."""
    paths = list(sizes)
    if selector or (not _looks_mlx(paths) and _gguf_groups(paths)):
        return "gguf", _pick_gguf(repo, paths, sizes, selector)
    if _looks_mlx(paths):
        return "mlx", _mlx_files(paths)
    raise ModelError(not_a_model)
