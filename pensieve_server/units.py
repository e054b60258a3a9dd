"""Sizes as people read them, for the server and the CLI alike: decimal units, as download tools and
disk labels show them (a "16 GB" model is 16 × 1000³ bytes)."""

from __future__ import annotations


def format_size(size: float, precise: bool = True) -> str:
    """``precise``: tenths of MB and KB, so a download is seen to move; otherwise whole MB, for model
    and memory sizes in overviews."""
    if size >= 1000**3:
        return f"{size / 1000**3:.1f} GB"
    if not precise:
        return f"{size / 1000**2:.0f} MB"
    if size >= 1000**2:
        return f"{size / 1000**2:.1f} MB"
    if size >= 1000:
        return f"{size / 1000:.1f} KB"
    return f"{size} B"
