"""Engine choice: MLX where it has a GPU, llama.cpp elsewhere, only engines that can run the model's
architecture, and clear errors for impossible pairs; engines registered in-process (the tests' scripted one)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pensieve_server.engine import devices, factory
from pensieve_server.engine.base import ModelLoadError
from pensieve_server.engine.scripted import ScriptedBackend
from pensieve_server.models.importer import import_model
from pensieve_server.models.store import ModelEntry, ModelStore
from tests.standin_hub import gguf_bytes

GGUF = ModelEntry("g", "gguf", "/m.gguf", "test", 8192, 1, "llama")
MLX = ModelEntry("x", "mlx", "/m", "test", 8192, 1)
QWEN = ModelEntry("q", "gguf", "/q.gguf", "test", 8192, 1, "qwen2")  # llama.cpp runs it; MLX cannot convert it
PACKAGE = Path(factory.__file__).resolve().parents[1]


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Pretend to be a machine: ``machine(platform, arch, mlx_device, llamacpp)``."""

    def pretend(system: str, arch: str, mlx: str | None, llamacpp: bool) -> None:
        monkeypatch.setattr(devices, "host", lambda: (system, arch))
        monkeypatch.setattr(devices, "mlx_gpu", lambda: mlx)
        monkeypatch.setattr(devices, "llamacpp_available", lambda: llamacpp)
        monkeypatch.setattr(devices, "llamacpp_on_gpu", lambda: False)  # GPU builds: tests/engine/test_devices.py

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
    assert factory.resolve_engine("auto", entry) == expected


def test_explicit_engine_wins(machine):
    machine("darwin", "arm64", "metal", True)
    assert factory.resolve_engine("llamacpp", GGUF) == "llamacpp"
    machine("linux", "x86_64", "cpu", True)
    assert factory.resolve_engine("MLX", GGUF) == "mlx"


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
        factory.resolve_engine(requested, entry)


def test_describe_device_on_this_machine():
    info = factory.describe_device()
    assert set(info["engines"]) == {"mlx", "llamacpp"}
    assert info["default_engine"] in ("mlx", "llamacpp")
    assert info["summary"] and str(info) == info["summary"]
    if devices.host() == ("linux", "x86_64"):
        assert info["default_engine"] == "llamacpp" and info["device"] == "cpu"


@pytest.mark.parametrize(("system", "arch", "mlx"), [("darwin", "arm64", "metal"), ("linux", "x86_64", "cuda"),
                                                     ("linux", "x86_64", "cpu")])
def test_auto_gives_mlx_only_what_it_can_convert(machine, system, arch, mlx):
    machine(system, arch, mlx, True)
    assert factory.resolve_engine("auto", QWEN) == "llamacpp"
    assert factory.resolve_engine("llamacpp", QWEN) == "llamacpp"


def test_mlx_for_an_architecture_it_cannot_convert_says_what_to_do(machine, tmp_path: Path):
    source = tmp_path / "tiny-qwen.gguf"
    source.write_bytes(gguf_bytes(architecture="qwen2"))
    entry = import_model(ModelStore(tmp_path / "models"), source)  # the architecture as import records it
    assert entry.architecture == "qwen2"
    machine("darwin", "arm64", "metal", True)
    with pytest.raises(ModelLoadError, match=r"architecture 'qwen2'.*--engine llamacpp"):
        factory.resolve_engine("mlx", entry)
    with pytest.raises(ModelLoadError, match=r"architecture 'qwen2'"):
        factory.load_backend(entry, "mlx", ModelStore(tmp_path / "models"))


def test_a_gguf_only_llama_cpp_runs_without_llama_cpp_names_the_extra(machine):
    machine("darwin", "arm64", "metal", False)  # the default Apple Silicon install: MLX only
    with pytest.raises(ModelLoadError, match=r"llama.cpp only.*\[llamacpp\]"):
        factory.resolve_engine("auto", QWEN)
    assert factory.resolve_engine("auto", GGUF) == "mlx"


def test_registered_engines_are_built_by_their_factory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(factory, "_REGISTERED", {})
    with pytest.raises(ModelLoadError, match="unknown engine 'scripted'"):
        factory.resolve_engine("scripted", GGUF)
    factory.register_engine("scripted", lambda entry, context: ScriptedBackend(context or 200_000, name=entry.name))
    assert factory.resolve_engine("scripted", GGUF) == "scripted"
    backend = factory.load_backend(GGUF, "scripted", ModelStore(tmp_path), context_length=321)
    assert isinstance(backend, ScriptedBackend) and backend.info.context_length == 321 and backend.info.name == "g"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_production_module_imports_the_scripted_test_double():
    importers = [path.relative_to(PACKAGE.parent) for path in PACKAGE.rglob("*.py")
                 if path.name != "scripted.py" and "pensieve_server.engine.scripted" in _imports(path)]
    assert importers == []


def test_backends_never_import_the_factory():
    """The factory imports the backends (and the device probes); a backend that imported it back
    would make the cycle select ↔ mlx_backend ↔ mlx_batch that the factory replaced."""
    engine = PACKAGE / "engine"
    for name in ("llamacpp_backend", "llamacpp_batch", "mlx_backend", "mlx_batch", "devices", "saved_states"):
        assert not {n for n in _imports(engine / f"{name}.py") if n.startswith("pensieve_server.engine.factory")}, name
    assert "pensieve_server" not in " ".join(_imports(engine / "devices.py")), "devices.py is a leaf"
