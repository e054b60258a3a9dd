"""Greedy sampling in numpy (engine/greedy.py) picks exactly what llama.cpp's own sampler chain picks.

Two ways: crafted logits (ties, zeros, negatives, -inf, a short history that evicts) through the real
llama.cpp chain (``penalties`` then ``greedy``, applied with ``llama_sampler_apply``) and through
:class:`GreedySampler`; and the real model decoding several requests in one batch, once sampled by
numpy and once by llama.cpp's chain, which must give the same tokens (same machine, same layout).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from pensieve_server.engine import llamacpp_backend
from pensieve_server.engine.base import SamplingParams
from pensieve_server.engine.greedy import GreedySampler, is_greedy
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.models.store import ModelStore
from tests.engine.test_llamacpp_backend import chat


def llama_chain(params: SamplingParams, n_vocab: int):
    """llama.cpp's chain for ``params`` as the backends build it (penalties, then greedy)."""
    import llama_cpp as lib

    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if params.repeat_penalty != 1.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_penalties(
            n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
    return chain


def llama_pick(chain, logits: np.ndarray) -> int:
    """What llama_sampler_sample does after reading the logits: apply the chain, then accept the pick."""
    import llama_cpp as lib

    data = (lib.llama_token_data * len(logits))()
    for i, value in enumerate(logits.tolist()):
        data[i].id, data[i].logit, data[i].p = i, value, 0.0
    array = lib.llama_token_data_array(data, len(logits), -1, False)
    lib.llama_sampler_apply(chain, ctypes.byref(array))
    token = data[array.selected].id
    lib.llama_sampler_accept(chain, token)
    return token


@pytest.mark.parametrize(("penalty", "last_n"), [(1.1, 64), (1.5, 3), (3.0, 1), (1.0, 64)])
def test_crafted_logits_pick_what_llamacpp_picks(penalty: float, last_n: int):
    params = SamplingParams(max_tokens=1, temperature=0.0, repeat_penalty=penalty, repeat_last_n=last_n)
    rng = np.random.default_rng(7)
    n_vocab = 40
    chain = llama_chain(params, n_vocab)
    ours = GreedySampler(params)
    picks = []
    try:
        for step in range(300):
            # Few distinct values: ties everywhere; a penalty must flip picks between them.
            logits = rng.choice(np.array([-3.0, -0.5, 0.0, 0.5, 1.0, 1.05, 2.0], dtype=np.float32), n_vocab)
            if step % 7 == 0:
                logits[rng.integers(n_vocab)] = -np.inf
            theirs = llama_pick(chain, logits.copy())
            mine = ours.sample(logits.copy())
            assert mine == theirs, (step, mine, theirs)
            picks.append(mine)
    finally:
        import llama_cpp

        llama_cpp.llama_sampler_free(chain)
    if penalty != 1.0:
        assert len(set(picks)) > 3  # the penalty moved picks around: the comparison had something to compare


def test_greedy_is_what_the_backends_build_a_greedy_chain_for():
    assert is_greedy(SamplingParams(max_tokens=1, temperature=0.0))
    assert is_greedy(SamplingParams(max_tokens=1, temperature=0.7, top_k=1))
    assert not is_greedy(SamplingParams(max_tokens=1, temperature=0.7))


@pytest.mark.slow
def test_batched_decode_gives_llamacpps_tokens(model_store: ModelStore, monkeypatch: pytest.MonkeyPatch):
    """Three requests decoded together, sampled in numpy, then by llama.cpp's chain: identical tokens."""
    backend = LlamaCppBatchBackend.load_batched(model_store.embedded(), parallel=3, context_length=1024)
    params = SamplingParams(max_tokens=48, temperature=0.0, repeat_penalty=1.3, repeat_last_n=8)
    prompts = [backend.tokenize(chat(q)) for q in ("Count from 1 to 30.", "List ten colours.", "Say hi.")]

    def decode(in_numpy: bool) -> dict[int, list[int]]:
        for slot in backend._slots:  # every run starts cold, in the same layout
            slot.tokens = []
        backend._lib.llama_memory_clear(backend._lib.llama_get_memory(backend._ctx), True)
        out: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
        for i, prompt in enumerate(prompts):
            backend.admit(i, prompt, params)
        assert all(isinstance(r.sampler, GreedySampler) == in_numpy for r in backend._running.values())
        for _ in range(params.max_tokens):
            for key, step in backend.step().items():
                if step is not None:
                    out[key].append(step.token)
        for i in range(len(prompts)):
            backend.release(i)
        return out

    try:
        numpy_tokens = decode(in_numpy=True)
        monkeypatch.setattr(llamacpp_backend, "is_greedy", lambda params: False)
        llama_tokens = decode(in_numpy=False)
    finally:
        backend.close()
    assert numpy_tokens == llama_tokens
    assert all(len(tokens) > 20 for tokens in numpy_tokens.values())
