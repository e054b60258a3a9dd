"""The llama.cpp thread count: one per physical core, read from /proc/cpuinfo's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from pensieve_server.engine import cpu


def _cpuinfo(tmp_path: Path, pairs: list[tuple[int, int]]) -> Path:
    blocks = [f"processor\t: {i}\nphysical id\t: {p}\ncore id\t\t: {c}\n" for i, (p, c) in enumerate(pairs)]
    path = tmp_path / "cpuinfo"
    path.write_text("\n".join(blocks))
    return path


def test_hyperthreads_count_once(tmp_path: Path) -> None:
    # 2 packages × 2 cores × 2 threads: 8 logical CPUs, 4 physical cores
    pairs = [(p, c) for p in (0, 1) for c in (0, 1)] * 2
    assert cpu.physical_cores(_cpuinfo(tmp_path, pairs)) == 4


def test_no_topology_says_unknown(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: some ARM\n\nprocessor\t: 1\n")
    assert cpu.physical_cores(path) is None
    assert cpu.physical_cores(tmp_path / "absent") is None


def test_default_uses_every_core_without_hyperthreading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 2)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu, "physical_cores", lambda: 2)
    assert cpu.default_compute_threads() == 2  # llama-cpp-python's own default would be 1


def test_default_halves_hyperthreaded_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 16)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(cpu, "physical_cores", lambda: 8)
    assert cpu.default_compute_threads() == 8
    assert cpu.compute_threads(3) == 3 and cpu.compute_threads(0) == 8


def test_real_machine_gets_at_least_one_thread() -> None:
    assert 1 <= cpu.default_compute_threads() <= cpu.usable_cpus()
