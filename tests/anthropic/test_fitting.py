"""Context fitting: each step on its own, validity of what is kept, determinism and prefix stability."""

from __future__ import annotations

import json
import re

import pytest

from pensieve_server.anthropic.errors import PromptTooLong
from pensieve_server.anthropic.fitting import (
    DROPPED_NOTE,
    TRIM_MARKER,
    answer_room,
    compact_tool_descriptions,
    drop_points,
    fit_request,
    fixed_part,
    stable_trim_level,
    strip_tool_schemas,
    turns_reserve,
)
from pensieve_server.anthropic.render import render_prompt
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.anthropic.validate import check_tool_results
from pensieve_server.engine.base import ModelInfo
from tests.fixtures import CLAUDE_CODE_REQUEST

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOL = ModelInfo(name="smollm2-135m", context_length=8192, chat_template=CHATML)


def count(request: MessagesRequest) -> int:
    """The unit tests' tokenizer: four characters a token on the rendered prompt."""
    return len(render_prompt(request, SMOL)) // 4


def text(value: str) -> list[dict]:
    return [{"type": "text", "text": value}]


def make_tools(n: int = 3) -> list[dict]:
    return [{
        "name": f"Tool{i}",
        "description": f"Does thing {i}.\n\n" + "Long explanation of when and how to use it. " * 40,
        "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "The path to work on, absolute. " * 5},
                "description": {"type": "string", "description": "What this call is for. " * 5},
                "mode": {"type": "string", "enum": ["a", "b"], "description": "Which mode."},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    } for i in range(n)]


def agent_messages(pairs: int, result_chars: int = 400) -> list[dict]:
    """A Claude Code-like agent loop: the task, then tool_use/tool_result pairs, with an inline system item."""
    messages: list[dict] = [
        {"role": "user", "content": text("Please fix the failing test in the repo.")},
        {"role": "system", "content": text("Available agent types: Explore, Plan.")},
    ]
    for i in range(pairs):
        messages.append({"role": "assistant", "content": [
            *text(f"Step {i}."),
            {"type": "tool_use", "id": f"toolu_{i:04d}", "name": "Tool0", "input": {"path": f"/repo/f{i}.py"}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i:04d}", "content": f"result {i}: " + "x" * result_chars},
        ]})
    return messages


def make_request(messages: list[dict], *, max_tokens: int = 100, system: str = "You are helpful.",
                 tools: list[dict] | None = None) -> MessagesRequest:
    return MessagesRequest(model="claude-test", max_tokens=max_tokens, messages=messages,
                           system=text(system), tools=make_tools() if tools is None else tools)


def load_fixture() -> MessagesRequest:
    body = json.loads(CLAUDE_CODE_REQUEST.read_text())["body"]
    messages = [
        {**m, "content": text(m["content"]) if isinstance(m["content"], str) else m["content"]} for m in body["messages"]
    ]
    return MessagesRequest(model=body["model"], max_tokens=body["max_tokens"], messages=messages,
                           system=body["system"], tools=body["tools"], stream=True)


def assert_valid_conversation(original: list[dict], kept: list[dict]) -> None:
    """First and last user turns kept, user/assistant alternate, every tool pair whole and adjacent."""
    assert kept[-1] == original[-1]
    assert kept[0]["content"][: len(original[0]["content"])] == original[0]["content"]
    roles = [m["role"] for m in kept if m["role"] != "system"]
    assert roles[0] == "user"
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))
    chat = [m for m in kept if m["role"] != "system"]
    for before, message in zip(chat, chat[1:], strict=False):
        uses = {b["id"] for b in before["content"] if b.get("type") == "tool_use"}
        results = {b["tool_use_id"] for b in message["content"] if b.get("type") == "tool_result"}
        assert results <= uses
        if message["role"] == "user":
            assert uses <= results


# -- the room for the answer ------------------------------------------------------------------------

@pytest.mark.parametrize(("max_tokens", "context", "room"), [
    (64000, 8192, 1024), (64000, 32768, 4096), (100, 8192, 100), (64000, 1024, 512), (64000, 131072, 16384),
])
def test_answer_room(max_tokens: int, context: int, room: int) -> None:
    assert answer_room(max_tokens, context) == room


# -- nothing to do ---------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["auto", "fit", "strict"])
def test_request_that_fits_is_untouched_and_max_tokens_capped(policy: str) -> None:
    request = make_request(agent_messages(2), max_tokens=64000)
    tokens = count(request)
    result = fit_request(request, count_tokens=count, context_length=tokens + 5000, policy=policy)
    assert result.actions == []
    assert result.prompt_tokens == tokens
    assert result.max_tokens == 5000
    assert result.request == request.replace(max_tokens=5000)


def test_small_max_tokens_kept() -> None:
    request = make_request(agent_messages(2), max_tokens=50)
    result = fit_request(request, count_tokens=count, context_length=count(request) + 5000, policy="fit")
    assert result.max_tokens == 50


# -- strict ------------------------------------------------------------------------------------------

def test_strict_raises_with_claude_codes_wording() -> None:
    request = make_request(agent_messages(5))
    tokens = count(request)
    with pytest.raises(PromptTooLong) as caught:
        fit_request(request, count_tokens=count, context_length=tokens, policy="strict")
    assert caught.value.message == f"prompt is too long: {tokens} tokens > {tokens} maximum"
    assert caught.value.status == 400 and caught.value.error_type == "invalid_request_error"


def test_strict_accepts_a_prompt_one_short_of_the_context() -> None:
    request = make_request(agent_messages(5))
    tokens = count(request)
    result = fit_request(request, count_tokens=count, context_length=tokens + 1, policy="strict")
    assert result.actions == [] and result.max_tokens == 1


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown context policy"):
        fit_request(make_request(agent_messages(1)), count_tokens=count, context_length=100, policy="squeeze")


# -- each step on its own ---------------------------------------------------------------------------

def test_step_1_compacts_tool_descriptions() -> None:
    request = make_request(agent_messages(2))
    tools, changed = compact_tool_descriptions(request.tools)
    target = count(request.replace(tools=tools)) + 100
    result = fit_request(request, count_tokens=count, context_length=target, policy="fit")
    assert result.actions == ["compacted 3 tool descriptions"]
    assert [t["description"] for t in result.request.tools] == ["Does thing 0.", "Does thing 1.", "Does thing 2."]
    assert [t["input_schema"] for t in result.request.tools] == [t["input_schema"] for t in request.tools]
    assert result.request.messages == request.messages and result.request.system == request.system
    assert result.prompt_tokens == count(result.request) <= target - 100


def test_step_2_drops_parameter_descriptions() -> None:
    request = make_request(agent_messages(2))
    tools, _ = strip_tool_schemas(compact_tool_descriptions(request.tools)[0])
    target = count(request.replace(tools=tools)) + 100
    result = fit_request(request, count_tokens=count, context_length=target, policy="fit")
    assert result.actions == ["compacted 3 tool descriptions", "dropped parameter descriptions from 3 tools"]
    assert result.request.tools[0]["input_schema"] == {
        "type": "object",
        "properties": {"path": {"type": "string"}, "description": {"type": "string"},
                       "mode": {"type": "string", "enum": ["a", "b"]}},
        "required": ["path"],
        "additionalProperties": False,
    }
    assert result.request.messages == request.messages


def test_step_3_trims_long_system_texts_keeping_the_head() -> None:
    long_system = "\n".join(f"Rule {i}: always be careful with item {i}." for i in range(800))
    request = make_request(agent_messages(2), system=long_system)
    result = fit_request(request, count_tokens=count, context_length=4096, policy="fit")
    assert result.actions[-1] == "trimmed 1 system text to 8192 characters"
    trimmed = result.request.system[0]["text"]
    assert trimmed.endswith("\n" + TRIM_MARKER)
    head = trimmed[: -len(TRIM_MARKER) - 1]
    assert long_system.startswith(head) and 8192 * 4 // 5 <= len(head) <= 8192
    assert long_system[len(head)] == "\n"  # cut at a line end
    assert result.request.messages == request.messages
    assert result.prompt_tokens + answer_room(100, 4096) <= 4096


def test_step_3_also_trims_inline_system_items() -> None:
    messages = agent_messages(1)
    messages[1] = {"role": "system", "content": text("Agents:\n" + "agent line\n" * 2000)}
    result = fit_request(make_request(messages), count_tokens=count, context_length=4096, policy="fit")
    assert result.request.messages[1]["content"][0]["text"].endswith(TRIM_MARKER)


def rules(count: int) -> str:
    return "\n".join(f"Rule {i}: always be careful with item {i}." for i in range(count))


def trim_actions(result) -> list[str]:
    return [action for action in result.actions if action.startswith("trimmed")]


def lean_tools() -> list[dict]:
    """make_tools() after steps 1 and 2, as step 3 sees them."""
    return strip_tool_schemas(compact_tool_descriptions(make_tools())[0])[0]


@pytest.mark.parametrize(("system_lines", "task_chars", "level"), [
    (150, 0, None), (250, 0, 8192), (400, 0, 8192), (800, 2400, 4096),
])
def test_step_3_level_comes_from_the_fixed_part_and_never_moves_as_turns_are_added(
        system_lines: int, task_chars: int, level: int | None) -> None:
    """The old ladder took the first level at which the whole request fit, so a growing conversation
    moved its system text down a level (a cache miss inside the system prompt): here it must not."""
    context, levels = 4096, set()
    for pairs in range(1, 41):
        messages = agent_messages(pairs)
        messages[0] = {"role": "user", "content": text("Please fix the failing test. " + "c" * task_chars)}
        request = make_request(messages, system=rules(system_lines))
        result = fit_request(request, count_tokens=count, context_length=context, policy="fit")
        assert result.prompt_tokens + answer_room(100, context) <= context
        if count(request.replace(tools=lean_tools())) > context - answer_room(100, context):  # step 3 ran
            levels.add(tuple(trim_actions(result)))
    assert levels == {(f"trimmed 1 system text to {level} characters",) if level else ()}


def test_stable_level_leaves_a_quarter_of_the_context_to_the_turns() -> None:
    request = make_request(agent_messages(30), system=rules(250), tools=lean_tools())  # ≈10k characters
    room = answer_room(100, 4096)
    assert turns_reserve(4096) == 1024
    assert fixed_part(request).messages == request.messages[:1]  # the agent list after the task can be dropped
    assert stable_trim_level(request, count, 4096, room) == 1  # [None, 8192, 4096, 2048][1]
    assert count(fixed_part(request)) + room + 1024 > 4096  # untrimmed it wouldn't leave the reserve


def test_inline_system_items_after_the_task_do_not_move_the_level() -> None:
    """Claude Code's agent list sits right after the task and later system items arrive with new
    turns: neither is part of the fixed part, so a long one doesn't change the system text's level."""
    short, long = agent_messages(12), agent_messages(12)
    long[1] = {"role": "system", "content": text("Agents:\n" + "agent line\n" * 2000)}
    long[7:7] = [{"role": "system", "content": text("Reminder:\n" + "remember this\n" * 600)}]
    fitted = [fit_request(make_request(messages, system=rules(250)), count_tokens=count, context_length=4096,
                          policy="fit") for messages in (short, long)]
    assert [trim_actions(result) for result in fitted] == [
        ["trimmed 1 system text to 8192 characters"], ["trimmed 3 system texts to 8192 characters"]]
    assert fitted[0].request.system == fitted[1].request.system


def test_a_newest_turn_too_big_for_the_level_falls_back_to_a_later_one() -> None:
    """Dropping can't remove the last exchange: when it doesn't fit at the fixed part's level, later
    levels are tried (and the next turn, once the big result can be dropped, goes back)."""
    messages = agent_messages(6)
    messages[7]["content"][0]["content"] = "z" * 8800  # the third tool result: ≈2,200 tokens
    request = make_request(messages[:8], system=rules(250))
    assert stable_trim_level(request.replace(tools=lean_tools()), count, 4096, answer_room(100, 4096)) == 1
    result = fit_request(request, count_tokens=count, context_length=4096, policy="fit")
    assert trim_actions(result) == ["trimmed 1 system text to 4096 characters"]
    assert result.prompt_tokens + answer_room(100, 4096) <= 4096
    later = make_request(messages, system=rules(250))
    later_result = fit_request(later, count_tokens=count, context_length=4096, policy="fit")
    assert trim_actions(later_result) == ["trimmed 1 system text to 8192 characters"]
    assert re.fullmatch(r"dropped \d+ old messages", later_result.actions[-1])


def test_step_4_drops_oldest_pairs_keeping_task_and_last_turn() -> None:
    request = make_request(agent_messages(30))
    result = fit_request(request, count_tokens=count, context_length=4096, policy="fit")
    assert result.actions[:2] == ["compacted 3 tool descriptions", "dropped parameter descriptions from 3 tools"]
    assert re.fullmatch(r"dropped \d+ old messages", result.actions[-1])
    kept = result.request.messages
    assert len(kept) < len(request.messages)
    assert kept[0]["content"][-1] == {"type": "text", "text": DROPPED_NOTE}
    assert_valid_conversation(request.messages, kept)
    assert result.prompt_tokens + answer_room(100, 4096) <= 4096
    assert result.max_tokens == 100


def test_drop_points_respect_pairs_and_alternation() -> None:
    messages = [
        {"role": "user", "content": text("task")},  # 0
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "T", "input": {}}]},  # 1
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "r"}]},  # 2
        {"role": "system", "content": text("note")},  # 3
        {"role": "assistant", "content": text("thinking aloud")},  # 4
        {"role": "user", "content": text("more")},  # 5
        {"role": "assistant", "content": [{"type": "tool_use", "id": "b", "name": "T", "input": {}}]},  # 6
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "b", "content": "r"}]},  # 7
    ]
    assert drop_points(messages) == (0, [4, 6])
    assert drop_points(messages[:3]) == (0, [])  # a single exchange can't lose anything


def test_nothing_left_to_drop_raises_prompt_too_long() -> None:
    request = make_request([{"role": "user", "content": text("y" * 40000)}])
    tokens = count(request)
    with pytest.raises(PromptTooLong) as caught:
        fit_request(request, count_tokens=count, context_length=4096, policy="auto")
    assert caught.value.message == f"prompt is too long: {tokens} tokens > 4096 maximum"


def test_failure_reports_more_than_the_limit_even_when_the_prompt_alone_fits() -> None:
    request = make_request([{"role": "user", "content": text("y" * 15000)}], max_tokens=2000, tools=[])
    tokens = count(request)
    with pytest.raises(PromptTooLong) as caught:
        fit_request(request, count_tokens=count, context_length=tokens + 10, policy="fit")
    assert caught.value.prompt_tokens > caught.value.limit


@pytest.mark.parametrize("context", range(1500, 8001, 500))
def test_fitted_conversations_stay_valid(context: int) -> None:
    messages = agent_messages(25)
    messages[10:10] = [  # a plain exchange in the middle, so both kinds of turns are dropped
        {"role": "assistant", "content": text("Shall I go on?")},
        {"role": "user", "content": text("Yes, go on.")},
    ]
    assert_valid_conversation(messages, messages)
    request = make_request(messages)
    try:
        result = fit_request(request, count_tokens=count, context_length=context, policy="fit")
    except PromptTooLong:
        return
    assert_valid_conversation(request.messages, result.request.messages)
    check_tool_results(result.request.messages)  # fitting never leaves an orphan tool_result (a 400)
    assert result.prompt_tokens == count(result.request)
    assert result.prompt_tokens + answer_room(100, context) <= context


def test_fitting_is_deterministic() -> None:
    request = make_request(agent_messages(30), system="\n".join(f"Rule {i}." for i in range(3000)))
    first = fit_request(request, count_tokens=count, context_length=4096, policy="fit")
    second = fit_request(request, count_tokens=count, context_length=4096, policy="fit")
    assert first == second
    assert render_prompt(first.request, SMOL) == render_prompt(second.request, SMOL)


# -- prefix stability across turns ----------------------------------------------------------------

def test_dropping_turns_is_prefix_stable_across_most_turns() -> None:
    """A growing agent loop: the fitted prompt of turn N is a prefix of turn N+1's most of the time."""
    context, turns = 4096, 80
    prompts = []
    for pairs in range(1, turns + 1):
        result = fit_request(make_request(agent_messages(pairs)), count_tokens=count, context_length=context, policy="fit")
        prompts.append(render_prompt(result.request, SMOL))
    misses = sum(not later.startswith(earlier) for earlier, later in zip(prompts, prompts[1:], strict=False))
    # Tool steps once, then one miss per dropped quantum (context // 8 tokens ≈ 2.5 exchanges).
    assert misses <= turns // 2
    hits_in_a_row = max(len(run) for run in "".join(
        "h" if later.startswith(earlier) else " " for earlier, later in zip(prompts, prompts[1:], strict=False)).split())
    assert hits_in_a_row >= 2
    # Once turns are dropped, a new cut only re-renders the turns: system, tools and the task still match.
    for earlier, later in zip(prompts, prompts[1:], strict=False):
        if DROPPED_NOTE in earlier and DROPPED_NOTE in later:
            assert later.startswith(earlier[: earlier.index(DROPPED_NOTE)])


def test_claude_code_fixture_fits_8192() -> None:
    request = load_fixture()
    assert count(request) > 8192
    result = fit_request(request, count_tokens=count, context_length=8192, policy="fit")
    assert result.actions == ["compacted 23 tool descriptions", "dropped parameter descriptions from 24 tools"]
    assert result.prompt_tokens + answer_room(request.max_tokens, 8192) <= 8192
    assert result.max_tokens == 8192 - result.prompt_tokens
    assert result.request.messages == request.messages  # the conversation itself is untouched
    assert fit_request(request, count_tokens=count, context_length=8192, policy="auto") == result


def test_claude_code_next_turn_extends_the_fitted_prompt() -> None:
    turn = load_fixture()
    next_turn = turn.replace(messages=[
        *turn.messages,
        {"role": "assistant", "content": text("The command printed pensieve-ok.")},
        {"role": "user", "content": text("Thanks. Now list the files.")},
    ])
    fitted = fit_request(turn, count_tokens=count, context_length=8192, policy="fit")
    fitted_next = fit_request(next_turn, count_tokens=count, context_length=8192, policy="fit")
    prompt, prompt_next = render_prompt(fitted.request, SMOL), render_prompt(fitted_next.request, SMOL)
    assert prompt_next.startswith(prompt)
    assert prompt_next[len(prompt):].startswith("The command printed pensieve-ok.<|im_end|>\n")
