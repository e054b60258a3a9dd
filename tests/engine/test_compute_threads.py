"""llama.cpp's thread count follows where it computes: a few threads when every layer is on a GPU
(the probes faked at their boundary, no GPU in CI), one per physical core on the CPU, the setting
when it is set. The real embedded model is loaded, so the thread count read back is llama.cpp's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pensieve_server.engine import cpu, devices
from pensieve_server.engine import factory as engines
from pensieve_server.models.store import ModelStore

H200 = devices.Gpu("nvidia", "NVIDIA H200", 143771 * 1024**2, "nvidia-smi")


@pytest.fixture(autouse=True)
def fresh_probes() -> Iterator[None]:
    devices.clear_caches()
    yield
    devices.clear_caches()


def pretend(monkeypatch: pytest.MonkeyPatch, gpu: devices.Gpu | None, offload: bool) -> None:
    """A 16-core machine (so the GPU and CPU defaults differ here too) with ``gpu`` and a llama.cpp build."""
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 16)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(cpu, "physical_cores", lambda: 16)
    monkeypatch.setattr(devices, "detect_gpu", lambda: gpu)
    monkeypatch.setattr(devices, "llamacpp_gpu_offload", lambda: offload)
    monkeypatch.setattr(devices, "llamacpp_gpu_backend", lambda: "cuda")


def test_gpu_offload_uses_a_few_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 16)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(cpu, "physical_cores", lambda: 16)
    assert cpu.compute_threads(0) == 16
    assert cpu.compute_threads(0, all_layers_on_gpu=True) == cpu.GPU_COMPUTE_THREADS < 16
    assert cpu.compute_threads(12, all_layers_on_gpu=True) == 12  # the setting wins


def test_gpu_threads_never_exceed_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 1)
    assert cpu.compute_threads(0, all_layers_on_gpu=True) == 1


def _loaded_threads(tmp_path: Path, parallel: int, configured: int = 0) -> tuple[int, int, dict | None]:
    entry = ModelStore(tmp_path / "models").embedded()
    assert entry is not None, "the embedded model is a required part of Pensieve's install"
    backend = engines.load_backend(entry, "llamacpp", ModelStore(tmp_path / "models"), context_length=512,
                                  prefix_cache_bytes=0, parallel=parallel, compute_threads=configured)
    try:
        params = backend._llama.context_params
        return params.n_threads, params.n_threads_batch, backend.gpu_layers
    finally:
        backend.close()


@pytest.mark.parametrize("parallel", [1, 2])
def test_engine_loads_with_few_threads_when_every_layer_is_offloaded(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, parallel: int) -> None:
    pretend(monkeypatch, H200, offload=True)
    threads, batch_threads, layers = _loaded_threads(tmp_path, parallel)
    assert layers is not None and layers["requested"] == -1  # every layer asked for the GPU
    assert (threads, batch_threads) == (cpu.GPU_COMPUTE_THREADS,) * 2
    assert cpu.GPU_COMPUTE_THREADS < cpu.default_compute_threads() == 16


def test_cpu_build_on_a_gpu_machine_keeps_one_thread_per_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pretend(monkeypatch, H200, offload=False)  # the PyPI build: CPU only
    threads, batch_threads, layers = _loaded_threads(tmp_path, 1)
    assert layers is not None and layers["requested"] == 0
    assert threads == batch_threads == cpu.default_compute_threads() == 16


def test_no_gpu_keeps_cpu_default_and_the_setting_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pretend(monkeypatch, None, offload=True)  # a GPU build on a machine without that GPU
    assert _loaded_threads(tmp_path, 1)[:2] == (cpu.default_compute_threads(),) * 2
    pretend(monkeypatch, H200, offload=True)
    assert _loaded_threads(tmp_path, 1, configured=3)[:2] == (3, 3)
