"""Which prompt tokens one batched llama.cpp step carries (pure planning, no model needed)."""

from __future__ import annotations

from types import SimpleNamespace

from pensieve_server.engine.llamacpp_batch import prefill_plan


def running(left: int) -> SimpleNamespace:
    return SimpleNamespace(pending=list(range(left)))


def plan(**left: int) -> tuple[list[str], int]:
    order, budget = prefill_plan([(name, running(n)) for name, n in left.items()], 512)
    return [name for name, _ in order], budget


def test_a_warm_turn_finishes_its_prefill_alone_before_a_cold_side_request() -> None:
    # Claude Code's title request (400 new tokens) arrives first; the turn has 100 new tokens.
    assert plan(side=400, turn=100, decoding=1) == (["decoding", "turn", "side"], 100)


def test_prompts_of_similar_size_share_a_step() -> None:
    assert plan(a=150, b=100, c=120) == (["b", "c", "a"], 512)
    assert plan(a=100, b=150, c=300) == (["a", "b", "c"], 250)


def test_a_long_prompt_takes_whole_chunks_when_nothing_can_finish() -> None:
    assert plan(long=3000) == (["long"], 512)
    assert plan(long=3000, longer=5000) == (["long", "longer"], 512)


def test_a_short_prompt_overtakes_a_long_prefill_in_progress() -> None:
    assert plan(long=3000, short=50) == (["short", "long"], 50)


def test_decoding_only_steps_are_unchanged() -> None:
    assert plan(a=1, b=1) == (["a", "b"], 512)
