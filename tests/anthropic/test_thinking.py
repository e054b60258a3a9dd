"""Reasoning: <think> split into thinking blocks, the setting reaching the template, thinking sent back."""

from __future__ import annotations

import pytest

from pensieve_server.anthropic.render import render_prompt
from pensieve_server.anthropic.stream import MessageAssembler, fold_events
from pensieve_server.anthropic.thinking import (
    OutputReader,
    ThinkingPiece,
    ThinkingSplitter,
    opens_inside_thinking,
    signature,
)
from pensieve_server.anthropic.tools import TextPiece
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.engine.base import Completion, ModelInfo

# A stand-in for Qwen3's template: the parts that matter here (enable_thinking, reasoning_content).
REASONING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and message.get('reasoning_content') %}"
    "<think>\n{{ message['reasoning_content'] }}\n</think>\n\n{% endif %}"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
REASONER = ModelInfo(name="reasoner", context_length=4096, chat_template=REASONING_TEMPLATE)


def split(chunks: list[str], inside: bool = False) -> list:
    splitter = ThinkingSplitter(inside=inside)
    out = [piece for chunk in chunks for piece in splitter.feed(chunk)] + splitter.finish()
    merged: list = []
    for piece in out:  # join neighbours of one kind, so chunking does not matter to the assertions
        if merged and type(merged[-1]) is type(piece):
            merged[-1] = (ThinkingPiece(merged[-1].text + piece.text) if isinstance(piece, ThinkingPiece)
                          else merged[-1] + piece)
        else:
            merged.append(piece)
    return merged


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_think_tags_split_whatever_the_chunking(size: int) -> None:
    text = "\n<think>\nLet me see. 2+2=4.\n</think>\n\nThe answer is 4."
    chunks = [text[i:i + size] for i in range(0, len(text), size)]
    assert split(chunks) == [ThinkingPiece("\nLet me see. 2+2=4.\n"), "The answer is 4."]


def test_prompt_opened_think_starts_inside_and_unfinished_reasoning_stays_reasoning() -> None:
    assert split(["abc</th", "ink>done"], inside=True) == [ThinkingPiece("abc"), "done"]
    assert split(["<think>still going"]) == [ThinkingPiece("still going")]
    assert opens_inside_thinking("<|im_start|>assistant\n<think>\n")


def test_think_later_in_the_answer_is_plain_text() -> None:
    assert split(["Use <think> tags"]) == ["Use <think> tags"]
    assert split(["<thin", "g>"]) == ["<thing>"]


def _events(pieces: list, show: bool = True) -> list:
    assembler = MessageAssembler(model="m", input_tokens=5)
    events = assembler.start()
    reader = OutputReader([], split=True, show=show)
    for text in pieces:
        for piece in reader.feed(text):
            events += assembler.on_piece(piece)
    for piece in reader.finish():
        events += assembler.on_piece(piece)
    return events + assembler.finish(Completion("end_turn", None, 5, 9))


def test_thinking_block_streams_then_signature_and_the_fold_keeps_it() -> None:
    events = _events(["<think>hmm", " ok</think>", "Hi!"])
    kinds = [(e, d.get("delta", d.get("content_block", {})).get("type")) for e, d in events]
    assert kinds[1:7] == [("content_block_start", "thinking"), ("content_block_delta", "thinking_delta"),
                          ("content_block_delta", "thinking_delta"), ("content_block_delta", "signature_delta"),
                          ("content_block_stop", None), ("content_block_start", "text")]
    message = fold_events(events)
    assert message["content"] == [
        {"type": "thinking", "thinking": "hmm ok", "signature": signature("hmm ok")},
        {"type": "text", "text": "Hi!"}]


def test_reasoning_is_dropped_when_thinking_was_not_asked_for_and_never_leaks() -> None:
    message = fold_events(_events(["<think>secret</think>", "Hello"], show=False))
    assert message["content"] == [{"type": "text", "text": "Hello"}]


def _request(thinking: dict | None, messages: list | None = None) -> MessagesRequest:
    return MessagesRequest(model="m", max_tokens=10, thinking=thinking,
                           messages=messages or [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])


def test_thinking_setting_reaches_the_template() -> None:
    off = render_prompt(_request({"type": "disabled"}), REASONER)
    absent = render_prompt(_request(None), REASONER)
    on = render_prompt(_request({"type": "enabled", "budget_tokens": 1024}), REASONER)
    adaptive = render_prompt(_request({"type": "adaptive"}), REASONER)
    assert off.endswith("<think>\n\n</think>\n\n") and absent == off
    assert on.endswith("<|im_start|>assistant\n") and adaptive == on


def test_thinking_blocks_sent_back_reach_the_template_as_reasoning_content() -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "add them", "signature": signature("add them")},
                                          {"type": "text", "text": "4"}]},
        {"role": "user", "content": [{"type": "text", "text": "and 3+3?"}]},
    ]
    prompt = render_prompt(_request({"type": "enabled", "budget_tokens": 100}, history), REASONER)
    assert "<|im_start|>assistant\n<think>\nadd them\n</think>\n\n4<|im_end|>" in prompt


def test_a_model_without_reasoning_never_gets_its_text_split() -> None:
    reader = OutputReader([], split=False, show=True)
    assert reader.feed("<think>x</think>y") + reader.finish() == [TextPiece("<think>x</think>y")]
