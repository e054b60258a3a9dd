"""Memory readings and the prefix cache's default size."""

from __future__ import annotations

import pytest

from pensieve_server import memory


def test_readings_are_plausible():
    assert 10 * 1024**2 < memory.resident_bytes() <= memory.peak_resident_bytes() * 2
    available = memory.available_bytes()
    assert available is None or available > 0


@pytest.mark.parametrize(
    ("available", "expected"),
    [(64 * 1024**3, memory.AUTO_CACHE_CAP), (8 * 1024**3, 1024**3), (1024**3, 128 * 1024**2), (None, 1024**3)],
)
def test_auto_cache_is_an_eighth_of_free_memory_capped(monkeypatch, available, expected):
    monkeypatch.setattr(memory, "available_bytes", lambda: available)
    assert memory.auto_cache_bytes() == expected
