"""How many requests generate together when ``parallel`` is left on auto (0).

Claude Code in interactive mode sends a small side request (the session title, on the haiku name)
1-5 ms before every turn. With one slot it runs first and the turn waits for all of it, and the
engine swaps the two conversations' states in and out on every turn; with two, each keeps its slot
and both are decoded in the same batch (measured with the captured traffic: docs/architecture.md,
"Side requests and parallel"). A second slot costs memory
only on llama.cpp, which allocates every slot's KV cache for the whole context up front: auto picks
two slots there when that second slot takes at most a quarter of the memory left beside the
weights, else one. MLX stays at one slot on auto until its batched engine has been measured
against its single-stream one on the same side-request workload (``--parallel 2`` opts in).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pensieve_server.memory import available_bytes
from pensieve_server.models.store import ModelEntry

log = logging.getLogger(__name__)

AUTO_PARALLEL = 2
SLOT_SHARE = 4  # a second slot's KV cache may take at most 1/SLOT_SHARE of the memory beside the weights


def kv_bytes_per_token(metadata: Mapping[str, Any]) -> int | None:
    """Bytes of f16 keys and values one token takes in every layer, from GGUF metadata (None: unknown)."""
    try:
        arch = metadata["general.architecture"]
        layers = int(metadata[f"{arch}.block_count"])
        heads = int(metadata[f"{arch}.attention.head_count"])
        kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
        key = int(metadata.get(f"{arch}.attention.key_length", int(metadata[f"{arch}.embedding_length"]) // heads))
        value = int(metadata.get(f"{arch}.attention.value_length", key))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # per-layer arrays, missing keys
        return None
    return layers * kv_heads * (key + value) * 2


def llamacpp_slots(per_token: int | None, per_request_context: int, weights_bytes: int,
                   available: int | None) -> int:
    """Two slots when a second one's KV cache fits in a quarter of the memory beside the weights."""
    if not per_token or not per_request_context or available is None:
        return 1
    spare = available - weights_bytes
    return AUTO_PARALLEL if per_token * per_request_context * SLOT_SHARE <= spare else 1


def auto_parallel(entry: ModelEntry, engine: str, context_length: int) -> int:
    """``parallel`` for ``entry`` on ``engine`` when the setting is auto (0)."""
    if engine != "llamacpp":
        return 1
    from pensieve_server.models.formats.gguf import read_gguf_info
    from pensieve_server.models.store import ModelError

    try:
        metadata = read_gguf_info(entry.weights).metadata  # the header only, not the weights
    except ModelError as exc:  # the loader gives the real error
        log.debug("cannot read %s's metadata for auto parallel: %s", entry.name, exc)
        return 1
    arch = metadata.get("general.architecture", "")
    try:
        per_request = context_length or int(metadata.get(f"{arch}.context_length", 0))
    except (TypeError, ValueError):
        per_request = 0
    slots = llamacpp_slots(kv_bytes_per_token(metadata), per_request, entry.size_bytes, available_bytes())
    log.info("parallel auto: %d slot(s) for %s (context %d per request)", slots, entry.name, per_request)
    return slots
