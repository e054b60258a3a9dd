"""The one size formatter the server and the CLI share: decimal units, precise or in whole MB."""

from __future__ import annotations

from pensieve_server.units import format_size


def test_precise_sizes_show_a_download_move() -> None:
    assert format_size(0) == "0 B"
    assert format_size(999) == "999 B"
    assert format_size(262_600) == "262.6 KB"
    assert format_size(98_362_432) == "98.4 MB"
    assert format_size(4_300_000_000) == "4.3 GB"


def test_overview_sizes_are_whole_mb() -> None:
    assert format_size(98_362_432, precise=False) == "98 MB"
    assert format_size(999, precise=False) == "0 MB"
    assert format_size(4_300_000_000.0, precise=False) == "4.3 GB"
