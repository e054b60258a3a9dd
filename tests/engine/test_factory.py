"""Engine choice: MLX where it has a GPU, llama.cpp elsewhere, and clear errors for impossible pairs."""

from __future__ import annotations

import pytest

from pensieve_server.engine import select
from pensieve_server.engine.base import ModelLoadError
from pensieve_server.models.store import ModelEntry

GGUF = ModelEntry("g", "gguf", "/m.gguf", "test", 8192, 1)
MLX = ModelEntry("x", "mlx", "/m", "test", 8192, 1)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Pretend to be a machine: ``machine(platform, arch, mlx_device, llamacpp)``."""

    def pretend(system: str, arch: str, mlx: str | None, llamacpp: bool) -> None:
        monkeypatch.setattr(select, "host", lambda: (system, arch))
        monkeypatch.setattr(select, "mlx_device", lambda: mlx)
        monkeypatch.setattr(select, "llamacpp_available", lambda: llamacpp)
        monkeypatch.setattr(select, "llamacpp_on_gpu", lambda: False)  # GPU builds: tests/engine/test_devices.py

    return pretend


@pytest.mark.parametrize(
    ("system", "arch", "mlx", "llamacpp", "entry", "expected"),
    [
        ("darwin", "arm64", "metal", True, GGUF, "mlx"),
        ("linux", "x86_64", "cpu", True, GGUF, "llamacpp"),
        ("linux", "x86_64", "cuda", True, GGUF, "mlx"),
        ("linux", "x86_64", "cpu", False, GGUF, "mlx"),
        ("win32", "AMD64", None, True, GGUF, "llamacpp"),
        ("linux", "x86_64", "cpu", True, MLX, "mlx"),
        ("darwin", "x86_64", "cpu", True, GGUF, "llamacpp"),
    ],
)
def test_auto(machine, system, arch, mlx, llamacpp, entry, expected):
    machine(system, arch, mlx, llamacpp)
    assert select.resolve_engine("auto", entry) == expected


def test_explicit_engine_wins(machine):
    machine("darwin", "arm64", "metal", True)
    assert select.resolve_engine("llamacpp", GGUF) == "llamacpp"
    machine("linux", "x86_64", "cpu", True)
    assert select.resolve_engine("MLX", GGUF) == "mlx"


@pytest.mark.parametrize(
    ("requested", "entry", "mlx", "llamacpp", "message"),
    [
        ("llamacpp", MLX, "cpu", True, "llama.cpp runs GGUF files only"),
        ("mlx", GGUF, None, True, "MLX does not import"),
        ("llamacpp", GGUF, "cpu", False, "llama-cpp-python is not installed"),
        ("auto", GGUF, None, False, "no inference engine is installed"),
        ("vllm", GGUF, "cpu", True, "unknown engine"),
        ("auto", ModelEntry("o", "onnx", "/m", "t", 1, 1), "cpu", True, "no engine runs"),
    ],
)
def test_impossible_choices_say_what_to_do(machine, requested, entry, mlx, llamacpp, message):
    machine("linux", "x86_64", mlx, llamacpp)
    with pytest.raises(ModelLoadError, match=message):
        select.resolve_engine(requested, entry)


def test_describe_device_on_this_machine():
    info = select.describe_device()
    assert set(info["engines"]) == {"mlx", "llamacpp"}
    assert info["default_engine"] in ("mlx", "llamacpp")
    assert info["summary"] and str(info) == info["summary"]
    if select.host() == ("linux", "x86_64"):
        assert info["default_engine"] == "llamacpp" and info["device"] == "cpu"
