"""MLX model folders (mlx-lm's layout): checked the same way whether imported from disk or pulled.

A folder is a model when it has a config.json object, readable ``*.safetensors`` (all shards an
index names) and a tokenizer; its context length and architecture come from the config.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from pensieve_server.models.formats.gguf import DEFAULT_CONTEXT
from pensieve_server.models.store import ModelError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


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
    if not any((folder / t).is_file() for t in TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
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


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs keep the language model's settings under ``text_config``."""
    text = config.get("text_config")
    return text if isinstance(text, dict) else {}


def mlx_context(config: dict[str, Any]) -> int:
    """The context length a config.json declares (the first key models use for it), or the default."""
    text = _text_config(config)
    for key in CONTEXT_KEYS:
        value = config.get(key) or text.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT


def mlx_architecture(config: dict[str, Any]) -> str:
    """The ``model_type`` of a config.json ("" when it does not say)."""
    return str(config.get("model_type") or _text_config(config).get("model_type") or "")
