"""The GPU benchmark helpers: py-spy stacks → functions by self time, and the GPU line of the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.decode_profile import self_time
from benchmarks.report import _gpu_words


def test_self_time_ranks_the_top_frames(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks.txt"
    stacks.write_text("run;step (b.py:1) 30\nrun;step (b.py:1);decode (c.py:2) 60\nrun;send (w.py:3) 10\nnot a line\n")
    rows = self_time(stacks)
    assert [r["function"] for r in rows] == ["decode (c.py:2)", "step (b.py:1)", "send (w.py:3)"]
    assert [r["self_share"] for r in rows] == pytest.approx([0.6, 0.3, 0.1])
    assert rows[1]["inclusive_share"] == pytest.approx(0.9)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert self_time(empty) == []


def test_report_names_the_gpu_and_the_build() -> None:
    assert _gpu_words(None).startswith("none")
    words = _gpu_words({"name": "NVIDIA H200", "memory_bytes": 143771 * 2**20, "llamacpp_gpu_offload": True,
                        "mlx": None})
    assert words == "NVIDIA H200, 140 GiB; llama.cpp built with GPU offload; MLX: not installed"
    assert "CPU-only" in _gpu_words({"name": "NVIDIA H200", "llamacpp_gpu_offload": False, "mlx": "cpu"})
