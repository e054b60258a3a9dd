"""Sampling in numpy (engine/sampling.py) follows llama.cpp's own sampler chain.

Greedy: crafted logits (ties, zeros, negatives, -inf, a short history that evicts) through the real
llama.cpp chain (``penalties`` then ``greedy``, applied with ``llama_sampler_apply``) and through
:class:`GreedySampler` pick the same tokens. Random: the tokens that can be drawn and their
probabilities equal what llama.cpp's ``penalties``, ``top_k``, ``top_p``, ``temp`` leave, and draws
follow them. Then the real model decoding several requests in one batch, every step checked against
llama.cpp's chain on the same logits.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from pensieve_server.engine import llamacpp_batch
from pensieve_server.engine.base import SamplingParams
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.engine.sampling import GreedySampler, RandomSampler, Sampler, is_greedy, make_sampler
from pensieve_server.models.store import ModelStore
from tests.engine.test_llamacpp_backend import chat


def llama_chain(params: SamplingParams, n_vocab: int):
    """llama.cpp's chain for ``params`` as the backends used to build it: penalties, then greedy, or
    top-k, top-p and temperature (no final draw: the test reads the distribution it leaves)."""
    import llama_cpp as lib

    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    if params.repeat_penalty != 1.0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_penalties(
            n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0))
    if is_greedy(params):
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(params.top_k))
    if 0 < params.top_p < 1:
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(params.temperature))
    return chain


def token_array(logits: np.ndarray):
    import llama_cpp as lib

    data = (lib.llama_token_data * len(logits))()
    for i, value in enumerate(logits.tolist()):
        data[i].id, data[i].logit, data[i].p = i, value, 0.0
    return data, lib.llama_token_data_array(data, len(logits), -1, False)


def llama_distribution(chain, logits: np.ndarray) -> dict[int, float]:
    """The tokens llama.cpp's (non-greedy) chain leaves for ``logits`` and their softmax probabilities."""
    import llama_cpp as lib

    data, array = token_array(logits)
    lib.llama_sampler_apply(chain, ctypes.byref(array))
    kept = [(data[i].id, data[i].logit) for i in range(array.size)]
    values = np.array([v for _, v in kept], dtype=np.float64)
    weights = np.exp(values - values.max())
    return {token: float(w) for (token, _), w in zip(kept, weights / weights.sum(), strict=True)}


def our_distribution(sampler: RandomSampler, logits: np.ndarray) -> dict[int, float]:
    """What :meth:`RandomSampler.sample` draws from for ``logits`` (the penalty applied to a copy)."""
    logits = logits.copy()
    sampler.penalty.apply(logits)
    tokens, probabilities = sampler.distribution(logits)
    return dict(zip(tokens.tolist(), probabilities.tolist(), strict=True))


def assert_same_distribution(ours: dict[int, float], theirs: dict[int, float]) -> None:
    """Equal probabilities; a token only one side keeps must be negligible (ours leaves out < e^-30)."""
    for token in ours.keys() | theirs.keys():
        assert abs(ours.get(token, 0.0) - theirs.get(token, 0.0)) < 2e-5, (token, ours.get(token), theirs.get(token))
    assert abs(sum(ours.values()) - 1.0) < 1e-9

def llama_pick(chain, logits: np.ndarray) -> int:
    """What llama_sampler_sample does after reading the logits: apply the chain, then accept the pick."""
    import llama_cpp as lib

    data, array = token_array(logits)
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
    assert isinstance(make_sampler(SamplingParams(max_tokens=1, temperature=0.0)), GreedySampler)
    assert isinstance(make_sampler(SamplingParams(max_tokens=1, temperature=0.2)), RandomSampler)


RANDOM_PARAMS = [
    dict(temperature=0.2, repeat_penalty=1.1),  # what Claude Code's requests get (no temperature sent)
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=40, repeat_penalty=1.3, repeat_last_n=5),
    dict(temperature=0.7, top_p=0.9),
    dict(temperature=0.5, top_k=200, top_p=0.5, repeat_penalty=1.1),
    dict(temperature=1.0, top_p=0.95, top_k=3),
]


@pytest.mark.parametrize("options", RANDOM_PARAMS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_random_sampling_draws_from_llamacpps_distribution(options: dict):
    import llama_cpp

    params = SamplingParams(max_tokens=1, seed=3, **options)
    rng = np.random.default_rng(11)
    n_vocab = 3000
    chain = llama_chain(params, n_vocab)
    ours = RandomSampler(params)
    try:
        for step in range(40):
            logits = (rng.standard_normal(n_vocab) * 3).astype(np.float32)  # a model's spread of logits
            logits[rng.integers(n_vocab, size=3)] = rng.uniform(6, 9, 3).astype(np.float32)  # a few likely ones
            if step % 5 == 0:
                logits[rng.integers(n_vocab)] = -np.inf  # a constraint's mask
            assert_same_distribution(our_distribution(ours, logits), llama_distribution(chain, logits.copy()))
            token = ours.sample(logits.copy())
            llama_cpp.llama_sampler_accept(chain, token)  # both histories take the same token
    finally:
        llama_cpp.llama_sampler_free(chain)


def test_draws_follow_the_distribution_and_a_seed_repeats_them():
    params = SamplingParams(max_tokens=1, temperature=0.8, seed=5)
    logits = (0.8 * np.log([0.5, 0.3, 0.15, 0.05])).astype(np.float32)  # softmax(logits / 0.8): those
    draws = [RandomSampler(params).sample(logits.copy()) for _ in range(3)]
    assert len(set(draws)) == 1  # a fresh sampler with the same seed draws the same token
    sampler = RandomSampler(params)
    counts = np.bincount([sampler.sample(logits.copy()) for _ in range(20_000)], minlength=4) / 20_000
    assert np.abs(counts - [0.5, 0.3, 0.15, 0.05]).max() < 0.015, counts
    unseeded = {RandomSampler(SamplingParams(max_tokens=1, temperature=0.8)).sample(logits.copy()) for _ in range(50)}
    assert len(unseeded) > 1  # no seed: not the same draw every time


class CheckedSampler:
    """The backend's own sampler, checked at every step against llama.cpp's chain on the same logits."""

    def __init__(self, params: SamplingParams, n_vocab: int) -> None:
        self.inner: Sampler = make_sampler(params)
        self.chain = llama_chain(params, n_vocab)
        self.steps = 0

    def sample(self, logits: np.ndarray) -> int:
        import llama_cpp

        if isinstance(self.inner, GreedySampler):
            expected = llama_pick(self.chain, logits.copy())
            token = self.inner.sample(logits)
            assert token == expected, (self.steps, token, expected)
        else:
            assert_same_distribution(our_distribution(self.inner, logits), llama_distribution(self.chain, logits.copy()))
            token = self.inner.sample(logits)
            llama_cpp.llama_sampler_accept(self.chain, token)
        self.steps += 1
        return token


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(temperature=0.0, repeat_penalty=1.3, repeat_last_n=8),
                                     dict(temperature=0.2, repeat_penalty=1.1),
                                     dict(temperature=0.9, top_k=40, top_p=0.9)], ids=["greedy", "default", "top"])
def test_batched_decode_samples_as_llamacpp_would(model_store: ModelStore, monkeypatch: pytest.MonkeyPatch,
                                                 options: dict):
    """Three requests decoded together on the real model; every step's sampling checked against llama.cpp."""
    import llama_cpp

    backend = LlamaCppBatchBackend.load_batched(model_store.embedded(), parallel=3, context_length=1024)
    samplers: list[CheckedSampler] = []

    def checked(params: SamplingParams) -> CheckedSampler:
        samplers.append(CheckedSampler(params, backend._n_vocab))
        return samplers[-1]

    monkeypatch.setattr(llamacpp_batch, "make_sampler", checked)
    params = SamplingParams(max_tokens=40, seed=1, **options)
    prompts = [backend.tokenize(chat(q)) for q in ("Count from 1 to 30.", "List ten colours.", "Say hi.")]
    try:
        for i, prompt in enumerate(prompts):
            backend.admit(i, prompt, params)
        for _ in range(params.max_tokens):
            backend.step()
    finally:
        backend.close()
        for sampler in samplers:
            llama_cpp.llama_sampler_free(sampler.chain)
    assert len(samplers) == 3 and all(s.steps >= 30 for s in samplers), [s.steps for s in samplers]


def test_a_draw_applies_the_repeat_penalty():
    """Two equally likely tokens and a harsh penalty on the last one drawn: the draws alternate."""
    sampler = RandomSampler(SamplingParams(max_tokens=1, temperature=1.0, repeat_penalty=1000.0, repeat_last_n=1))
    logits = np.full(10, -np.inf, dtype=np.float32)
    logits[[3, 7]] = 50.0
    draws = [sampler.sample(logits.copy()) for _ in range(20)]
    assert all(a != b for a, b in zip(draws, draws[1:], strict=False)), draws
