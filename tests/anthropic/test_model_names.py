"""Claude model names map to local models by tier; local names serve themselves; the rest is a 404."""

from __future__ import annotations

import pytest

from pensieve_server.anthropic.errors import NotFound
from pensieve_server.anthropic.model_names import is_claude_name, resolve_model_name, tier_of

LOCAL = ["qwen3-8b", "smollm2-135m", "Llama-3.2-1B"]
TIERS = {"opus": "qwen3-8b", "haiku": "smollm2-135m"}


@pytest.mark.parametrize(
    ("name", "tier"),
    [
        ("claude-opus-4-8", "opus"),
        ("claude-opus-4-8[1m]", "opus"),
        ("claude-sonnet-4-5-20250929", "sonnet"),
        ("claude-sonnet-4-5[1m]", "sonnet"),
        ("claude-3-5-haiku-latest", "haiku"),
        ("claude-haiku-4-5", "haiku"),
        ("CLAUDE-OPUS-4-1", "opus"),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", "sonnet"),
        ("claude-sonnet-4@20250514", "sonnet"),
        ("sonnet", "sonnet"),
        ("claude-2.1", None),
        ("claude-instant-1", None),
        ("qwen3-8b", None),
        ("my-sonnet-finetune", None),
        ("claudette", None),
    ],
)
def test_tier_of(name: str, tier: str | None) -> None:
    assert tier_of(name) == tier


def test_is_claude_name() -> None:
    assert is_claude_name("claude-opus-4-8[1m]")
    assert is_claude_name("claude-2.1")
    assert not is_claude_name("claudette-7b")
    assert not is_claude_name("qwen3-8b")


@pytest.mark.parametrize(
    ("requested", "local"),
    [
        ("claude-opus-4-8", "qwen3-8b"),
        ("claude-opus-4-8[1m]", "qwen3-8b"),
        ("claude-3-5-haiku-latest", "smollm2-135m"),
        ("claude-sonnet-4-5-20250929", "Llama-3.2-1B"),  # no sonnet tier: the default
        ("claude-2.1", "Llama-3.2-1B"),  # unknown family: the default
        ("qwen3-8b", "qwen3-8b"),
        ("smollm2-135m", "smollm2-135m"),
        ("llama-3.2-1b", "Llama-3.2-1B"),  # case-insensitive when unambiguous
    ],
)
def test_resolve(requested: str, local: str) -> None:
    assert resolve_model_name(requested, LOCAL, TIERS, "Llama-3.2-1B") == local


def test_empty_tier_entry_falls_back_to_default() -> None:
    assert resolve_model_name("claude-sonnet-4-5", LOCAL, {"sonnet": ""}, "qwen3-8b") == "qwen3-8b"


def test_tier_target_need_not_be_installed_yet() -> None:
    # The caller loads it and reports a missing model with its own message.
    assert resolve_model_name("claude-opus-4-8", [], {"opus": "big-model"}, "") == "big-model"


def test_local_name_wins_over_tier_mapping() -> None:
    assert resolve_model_name("sonnet", ["sonnet"], {"sonnet": "qwen3-8b"}, "qwen3-8b") == "sonnet"


def test_unknown_name_lists_available_models() -> None:
    with pytest.raises(NotFound) as info:
        resolve_model_name("gpt-4o", LOCAL, TIERS, "qwen3-8b")
    assert info.value.status == 404
    assert info.value.message.startswith("model: gpt-4o")
    for name in LOCAL:
        assert name in info.value.message


def test_unknown_name_with_no_models_says_how_to_get_one() -> None:
    with pytest.raises(NotFound, match="pensieve models pull"):
        resolve_model_name("gpt-4o", [], {}, "")


def test_claude_name_with_nothing_configured_is_not_found() -> None:
    with pytest.raises(NotFound, match="model: claude-opus-4-8"):
        resolve_model_name("claude-opus-4-8", [], {}, "")


def test_ambiguous_case_insensitive_match_is_not_guessed() -> None:
    with pytest.raises(NotFound):
        resolve_model_name("model-a", ["Model-A", "MODEL-A"], {}, "")
