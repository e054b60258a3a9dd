"""The upstream translation carries reasoning both ways: reasoning_content ⇄ thinking blocks."""

from __future__ import annotations

from pensieve_server.anthropic.stream import MessageAssembler, fold_events
from pensieve_server.anthropic.thinking import ThinkingPiece, signature
from pensieve_server.anthropic.validate import parse_messages_request
from pensieve_server.engine.base import Completion
from pensieve_server.upstream.translate import ChunkTranslator, response_as_chunk, to_openai_request


def _chunk(**delta) -> dict:
    return {"choices": [{"index": 0, "delta": delta}]}


def test_streamed_reasoning_content_becomes_a_thinking_block_before_the_text() -> None:
    translator = ChunkTranslator(show_thinking=True)
    pieces = []
    for chunk in (_chunk(reasoning_content="Think"), _chunk(reasoning_content="ing."), _chunk(content="Answer")):
        pieces += translator.feed(chunk)
    pieces += translator.finish()
    assembler = MessageAssembler(model="m", input_tokens=3)
    events = assembler.start()
    for piece in pieces:
        events += assembler.on_piece(piece)
    message = fold_events(events + assembler.finish(Completion("end_turn", None, 3, 4)))
    assert message["content"] == [{"type": "thinking", "thinking": "Thinking.", "signature": signature("Thinking.")},
                                  {"type": "text", "text": "Answer"}]


def test_reasoning_is_dropped_when_thinking_was_not_asked_for() -> None:
    translator = ChunkTranslator(show_thinking=False)
    pieces = translator.feed(_chunk(reasoning_content="secret")) + translator.feed(_chunk(content="Hi"))
    assert [type(piece).__name__ for piece in pieces] == ["TextPiece"]


def test_whole_response_reasoning_field_is_read_too() -> None:
    translator = ChunkTranslator()
    pieces = translator.feed(response_as_chunk({"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "reasoning": "because", "content": "ok"}}]}))
    assert pieces[0] == ThinkingPiece("because")


def test_thinking_blocks_go_back_as_reasoning_content() -> None:
    request = parse_messages_request({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                          {"type": "text", "text": "a"}]},
        {"role": "user", "content": "again"}]})
    assistant = to_openai_request(request, "m")["messages"][1]
    assert assistant == {"role": "assistant", "content": "a", "reasoning_content": "hmm"}
