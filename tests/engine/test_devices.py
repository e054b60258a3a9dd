"""GPUs found and used: the device probes faked at their boundary (no GPU in CI), then what
``engine = auto`` picks and what doctor and ``status`` say about it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pensieve_cli.commands.daemon import gpu_line
from pensieve_cli.doctor import report
from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.engine import check_gpu
from pensieve_server.engine import devices, factory
from pensieve_server.engine.base import ModelLoadError
from pensieve_server.models.store import ModelEntry
from pensieve_server.settings import load_settings

GGUF = ModelEntry("g", "gguf", "/m.gguf", "test", 8192, 1, "llama")
H200 = devices.Gpu("nvidia", "NVIDIA H200", 143771 * 1024**2, "nvidia-smi")
RADEON = devices.Gpu("amd", "AMD Radeon PRO W7900", None, "rocm-smi")
M3 = devices.Gpu("apple", "Apple M3 Max GPU", None, "Metal")


@pytest.fixture(autouse=True)
def fresh_probes() -> Iterator[None]:
    devices.clear_caches()
    yield
    devices.clear_caches()


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Pretend: ``machine(gpu, llamacpp_offload, mlx, system=..., arch=...)``; None for "not installed"."""

    def pretend(gpu: devices.Gpu | None, llamacpp: bool | None, mlx: str | None,
                system: str = "linux", arch: str = "x86_64") -> None:
        monkeypatch.setattr(devices, "host", lambda: (system, arch))
        monkeypatch.setattr(devices, "detect_gpu", lambda: gpu)
        monkeypatch.setattr(devices, "llamacpp_gpu_offload", lambda: llamacpp)
        monkeypatch.setattr(devices, "mlx_gpu", lambda: mlx)
        monkeypatch.setattr(devices, "llamacpp_available", lambda: llamacpp is not None)
        monkeypatch.setattr(devices, "llamacpp_gpu_backend",
                            lambda: {"nvidia": "cuda", "amd": "rocm", "apple": "metal"}[gpu.vendor] if gpu else "gpu")

    return pretend


# -- probes ------------------------------------------------------------------------------------------

def test_nvidia_smi_answer_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_run", lambda command: "NVIDIA H200, 143771\n" if command[0] == "nvidia-smi" else None)
    assert devices.nvidia_gpu() == devices.Gpu("nvidia", "NVIDIA H200", 143771 * 1024**2, "nvidia-smi")


def test_rocm_smi_answer_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = "device,Card Series,Card Model,Card Vendor\ncard0,AMD Radeon PRO W7900,0x7448,Advanced Micro Devices\n"
    monkeypatch.setattr(devices, "_run", lambda command: answer if command[0] == "rocm-smi" else None)
    gpu = devices.amd_gpu()
    assert gpu is not None and gpu.vendor == "amd" and gpu.name == "AMD Radeon PRO W7900"


def test_apple_gpu_only_on_apple_silicon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_run", lambda command: "Apple M3 Max\n")
    monkeypatch.setattr(devices, "host", lambda: ("darwin", "arm64"))
    assert devices.apple_gpu() == devices.Gpu("apple", "Apple M3 Max GPU", None, "Metal")
    monkeypatch.setattr(devices, "host", lambda: ("darwin", "x86_64"))
    assert devices.apple_gpu() is None


def test_probes_on_this_machine_never_raise() -> None:
    gpu = devices.detect_gpu()
    assert gpu is None or gpu.vendor in devices.VENDOR_WORDS
    assert devices.llamacpp_gpu_offload() in (True, False)  # llama-cpp-python is a required part here
    assert devices.mlx_gpu() in ("metal", "cuda", "cpu")


# -- engine = auto -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("gpu", "llamacpp", "mlx", "system", "arch", "expected"),
    [
        (H200, True, "cuda", "linux", "x86_64", "llamacpp"),  # llama.cpp on the GPU beats MLX's CUDA build
        (H200, False, "cuda", "linux", "x86_64", "mlx"),  # a CPU-only llama.cpp: MLX has the GPU
        (H200, False, "cpu", "linux", "x86_64", "llamacpp"),  # neither on the GPU: llama.cpp is faster on a CPU
        (None, True, "cpu", "linux", "x86_64", "llamacpp"),  # a GPU build without a GPU computes on the CPU
        (RADEON, True, "cpu", "linux", "x86_64", "llamacpp"),
        (M3, None, "metal", "darwin", "arm64", "mlx"),  # the default Apple Silicon install: no llama.cpp
        (M3, True, "metal", "darwin", "arm64", "mlx"),  # with the llamacpp extra, MLX still leads there
        (None, True, None, "win32", "AMD64", "llamacpp"),
    ],
)
def test_auto_prefers_the_fastest_usable_engine(machine, gpu, llamacpp, mlx, system, arch, expected) -> None:
    machine(gpu, llamacpp, mlx, system, arch)
    assert factory.resolve_engine("auto", GGUF) == expected


def test_llamacpp_without_it_names_the_extra(machine) -> None:
    machine(M3, None, "metal", "darwin", "arm64")
    with pytest.raises(ModelLoadError, match=r"\[llamacpp\]"):
        factory.resolve_engine("llamacpp", GGUF)


def test_llamacpp_device_needs_a_build_and_a_gpu(machine) -> None:
    machine(H200, True, None)
    assert devices.llamacpp_device() == "cuda" and devices.llamacpp_on_gpu()
    machine(None, True, None)
    assert devices.llamacpp_device() == "cpu"
    machine(H200, False, None)
    assert devices.llamacpp_device() == "cpu"
    machine(H200, None, None)
    assert devices.llamacpp_device() is None


def test_layers_requested_follow_the_build_and_the_gpu(machine) -> None:
    from pensieve_server.engine.llamacpp_backend import gpu_layers_to_request

    machine(H200, True, None)
    assert gpu_layers_to_request(devices.llamacpp_device()) == -1
    machine(H200, False, None)
    assert gpu_layers_to_request(devices.llamacpp_device()) == 0
    machine(None, True, None)
    assert gpu_layers_to_request(devices.llamacpp_device()) == 0
    machine(H200, None, None)
    assert gpu_layers_to_request(devices.llamacpp_device()) == 0


# -- doctor and status -----------------------------------------------------------------------------

def gpu_check(engine: str) -> report.Check:
    ctx = Context(load_settings({"engine": engine}), {}, None, load_model=False)
    ctx.engine_choice = (engine, "")  # the engine under test, whatever this machine would pick
    return check_gpu(ctx)


def test_doctor_gives_the_cuda_rebuild_for_a_cpu_only_llama_cpp(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(H200, False, "cpu")
    monkeypatch.setattr(devices.shutil, "which", lambda name: f"/usr/bin/{name}")
    check = gpu_check("llamacpp")
    assert check.status == report.WARN and "NVIDIA H200" in check.detail and "CPU only" in check.detail
    assert check.fix == 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
    assert check.data["on_gpu"] is False


def test_doctor_says_when_the_cuda_toolkit_is_missing(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(H200, False, "cpu")
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    assert "nvcc" in gpu_check("llamacpp").fix


def test_doctor_gives_hip_for_amd_and_powershell_on_windows(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices.shutil, "which", lambda name: f"/usr/bin/{name}")
    machine(RADEON, False, None)
    assert gpu_check("llamacpp").fix.startswith('CMAKE_ARGS="-DGGML_HIP=on" pip install')
    machine(H200, False, None, "win32", "AMD64")
    assert gpu_check("llamacpp").fix.startswith('$env:CMAKE_ARGS="-DGGML_CUDA=on"; pip install')


def test_doctor_is_content_when_the_engine_uses_the_gpu(machine) -> None:
    machine(H200, True, None)
    check = gpu_check("llamacpp")
    assert check.status == report.OK and "offloads every layer" in check.detail
    machine(M3, None, "metal", "darwin", "arm64")
    check = gpu_check("mlx")
    assert check.status == report.OK and "metal" in check.detail


def test_doctor_on_mlx_without_its_gpu(machine) -> None:
    machine(M3, None, "cpu", "darwin", "arm64")
    assert gpu_check("mlx").fix == "pip install --force-reinstall mlx mlx-lm"
    machine(H200, False, "cpu")
    fix = gpu_check("mlx").fix
    assert "-DGGML_CUDA=on" in fix and 'mlx[cuda]' in fix


def test_doctor_without_a_gpu_is_ok(machine) -> None:
    machine(None, False, "cpu")
    check = gpu_check("llamacpp")
    assert check.status == report.OK and "no NVIDIA, AMD or Apple GPU" in check.detail and not check.fix


def test_status_line_shows_the_offloaded_layers() -> None:
    gpu = {"vendor": "nvidia", "name": "NVIDIA H200", "memory_bytes": 150754820096, "via": "nvidia-smi"}
    line = gpu_line(gpu, {"requested": -1, "offloaded": 31, "total": 31})
    assert line == "NVIDIA H200 (151 GB): 31/31 layers offloaded (n_gpu_layers -1)"
    assert gpu_line(None, {"requested": 0, "offloaded": 0, "total": 31}).startswith("no GPU found: 0/31")
