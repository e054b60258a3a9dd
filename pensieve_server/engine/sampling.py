"""Sampling in numpy on llama.cpp's logits: llama.cpp's own sampler chain, without its per-token cost.

``llama_sampler_sample`` copies the whole vocabulary into a fresh array and looks every entry up in the
repeat penalty's hash map on every call (0.42 ms a token for SmolLM2's 49k vocabulary on the 2-core VM),
one call per stream per step, serially on the engine thread. Here the penalty touches only the ≤
``last_n`` tokens it applies to; a greedy pick is one ``argmax``; a random pick looks only at the tokens
that can matter. Claude Code sends no temperature, so its requests take the random path (the default
temperature is 0.2).

The rules are llama.cpp's (src/llama-sampler.cpp), in the order the backends used to chain them:

- repeat penalty: every sampled token enters a history of the last ``last_n``; a token in it has its
  logit multiplied by the penalty when ≤ 0, else divided by it (float32, as in C);
- greedy (temperature ≤ 0 or top_k == 1): the first highest logit (numpy's ``argmax`` returns the first);
- else top-k, then top-p on the softmax of what is left (the smallest prefix, by logit, whose mass
  reaches p, at least one token), then temperature, then a draw from the softmax.

A random pick first keeps only the tokens within ``CUTOFF`` nats of the best one at the scale the
distribution is computed at: a token further away carries under e^-30 of the best one's weight, so
all of a 49k vocabulary beyond it holds under 5e-9 of the mass. At temperature 0.2 that leaves a few
tokens instead of 49,152, which is what makes the draw cheap.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from pensieve_server.engine.base import SamplingParams

CUTOFF = 30.0  # nats below the best token's logit (at the scale in use) past which a token is left out


def is_greedy(params: SamplingParams) -> bool:
    """Whether ``params`` leave no randomness: llama.cpp's greedy sampler."""
    return params.temperature <= 0 or params.top_k == 1


class RepeatPenalty:
    """llama.cpp's ``penalties`` sampler (repeat part): its history lives here, as in llama.cpp's chain."""

    def __init__(self, params: SamplingParams) -> None:
        active = params.repeat_penalty != 1.0 and params.repeat_last_n > 0
        self.penalty = np.float32(params.repeat_penalty)
        self.history: deque[int] | None = deque(maxlen=params.repeat_last_n) if active else None

    def apply(self, logits: np.ndarray) -> None:
        """Penalise the remembered tokens in ``logits``, in place. A token twice in the history is
        penalised once: both writes store the same value."""
        history = self.history
        if history:
            seen = np.fromiter(history, dtype=np.intp, count=len(history))
            values = logits[seen]
            logits[seen] = np.where(values <= 0, values * self.penalty, values / self.penalty)

    def remember(self, token: int) -> None:
        if self.history is not None:
            self.history.append(token)


class GreedySampler:
    """One request's greedy sampler: the same tokens as llama.cpp's ``penalties`` + ``greedy`` chain."""

    def __init__(self, params: SamplingParams) -> None:
        self.penalty = RepeatPenalty(params)

    def sample(self, logits: np.ndarray) -> int:
        """The token to emit from one row of float32 ``logits`` (penalised in place), remembered."""
        self.penalty.apply(logits)
        token = int(logits.argmax())
        self.penalty.remember(token)
        return token


class RandomSampler:
    """One request's random sampler: top-k, top-p, temperature and a draw, seeded per request."""

    def __init__(self, params: SamplingParams) -> None:
        self.penalty = RepeatPenalty(params)
        self.temperature = float(params.temperature)
        self.top_k = params.top_k
        self.top_p = params.top_p if 0 < params.top_p < 1 else 1.0
        # top-p weighs tokens at temperature 1: keep what matters at that scale too.
        self.span = CUTOFF * max(self.temperature, 1.0 if self.top_p < 1 else self.temperature)
        self.rng = np.random.default_rng(None if params.seed is None else params.seed & 0xFFFFFFFFFFFFFFFF)

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens that can be drawn from ``logits`` (after the penalty) and their probabilities."""
        best = logits.max()
        tokens = np.flatnonzero(logits >= best - self.span)
        values = logits[tokens].astype(np.float64)
        if 0 < self.top_k < len(tokens):
            keep = np.argpartition(values, -self.top_k)[-self.top_k:]
            tokens, values = tokens[keep], values[keep]
        if self.top_p < 1:
            order = np.argsort(-values, kind="stable")
            tokens, values = tokens[order], values[order]
            mass = np.cumsum(np.exp(values - best))
            kept = int(np.searchsorted(mass, self.top_p * mass[-1])) + 1  # the first prefix reaching p
            tokens, values = tokens[:kept], values[:kept]
        weights = np.exp((values - best) / self.temperature)
        return tokens, weights / weights.sum()

    def sample(self, logits: np.ndarray) -> int:
        """The token to emit from one row of float32 ``logits`` (penalised in place), remembered."""
        self.penalty.apply(logits)
        tokens, probabilities = self.distribution(logits)
        index = int(np.searchsorted(np.cumsum(probabilities), self.rng.random(), side="right"))
        token = int(tokens[min(index, len(tokens) - 1)])
        self.penalty.remember(token)
        return token


Sampler = GreedySampler | RandomSampler


def make_sampler(params: SamplingParams) -> Sampler:
    """The sampler for one request's ``params``."""
    return GreedySampler(params) if is_greedy(params) else RandomSampler(params)
