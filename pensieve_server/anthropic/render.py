"""Anthropic Messages request → one prompt string through the model's chat template.

Rendering is deterministic and never tokenizes (callers count with the backend's tokenizer), so the
same conversation always yields the same prefix and the engine's prefix cache hits turn after turn.

Mapping:
- system blocks → one leading system message; Claude Code's ``x-anthropic-billing-header`` line is
  removed (its ``cch=`` value changes per request and would break the prefix cache).
- ``role: "system"`` items inside ``messages`` stay in place when the template renders system
  messages anywhere (ChatML does); otherwise they become a ``<system>`` note in the next user turn.
- ``tool_use`` → Hermes ``<tool_call>`` JSON in the assistant turn; ``tool_result`` →
  ``<tool_response>`` in the user turn. Templates that render tools natively (Qwen 2.5, Hermes,
  Llama 3.1…) get OpenAI-style ``tools``, ``tool_calls`` and ``role: "tool"`` messages instead.
- thinking blocks are dropped; an image becomes a short note (media.py: the model cannot see it);
  a document becomes its text (plain text, PDF) or a note.
- consecutive turns of one role are merged, as the Anthropic API does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Protocol

from pensieve_server.anthropic.media import document_text, image_note
from pensieve_server.anthropic.template import render_chat, template_capabilities
from pensieve_server.anthropic.thinking import is_reasoning_template, template_options
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.engine.base import ModelInfo

_BILLING_LINE = re.compile(r"^[ \t]*x-anthropic-billing-header:[^\n]*(\n|$)", re.IGNORECASE | re.MULTILINE)


def _dumps(value: Any) -> str:
    """The one JSON spelling used in prompts: key order kept, fixed separators, readable unicode."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def neutralise_system_text(text: str) -> str:
    """Remove Claude Code's per-request billing header line (it carries no instruction)."""
    return _BILLING_LINE.sub("", text)


def system_text(request: MessagesRequest) -> str:
    """The request's system blocks as one string, billing header removed, blocks split by blank lines."""
    parts = [neutralise_system_text(block.get("text", "")).strip() for block in request.system]
    return "\n\n".join(part for part in parts if part)


# -- tools --------------------------------------------------------------------------------------------

def first_line(description: str) -> str:
    """The first non-empty line of a description, cut after its first sentence when that line is long."""
    line = next((ln.strip() for ln in description.splitlines() if ln.strip()), "")
    if len(line) > 160:
        match = re.search(r"[.!?](\s|$)", line)
        if match:
            line = line[: match.start() + 1]
    return line


def _compact_line(tool: dict[str, Any]) -> str:
    schema = tool.get("input_schema") or {}
    required = set(schema.get("required") or [])
    params = [name if name in required else f"{name}?" for name in (schema.get("properties") or {})]
    summary = first_line(tool.get("description") or "")
    return f"{tool['name']}({', '.join(params)})" + (f": {summary}" if summary else "")


TOOL_CALL_FORMAT = (
    "To call a tool, write a JSON object with the tool's name and arguments inside <tool_call></tool_call> "
    "tags, exactly like this:\n"
    "<tool_call>\n"
    '{"name": "<tool name>", "arguments": {"<parameter>": <value>}}\n'
    "</tool_call>\n"
    "You may call several tools, each in its own <tool_call> block. After your tool calls, stop: the "
    "results come back in <tool_response></tool_response> tags in the next message."
)


def render_tools_text(tools: list[dict[str, Any]], compact: bool = False) -> str:
    """The Hermes-style tools section appended to the system message for templates without tools.

    Full: one JSON object per tool ``{"name", "description", "parameters"}``. Compact: one line per
    tool, ``Name(param, optional?): first line of the description`` (≈20x smaller for Claude Code).
    """
    if compact:
        listing = "\n".join(_compact_line(tool) for tool in tools)
        intro = "You can call these tools (parameters ending in ? are optional):"
    else:
        listing = "\n".join(
            _dumps({"name": tool["name"], "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}})
            for tool in tools
        )
        intro = "You can call these tools, described as JSON objects:"
    return f"# Tools\n\n{intro}\n<tools>\n{listing}\n</tools>\n\n{TOOL_CALL_FORMAT}"


def tool_choice_text(tool_choice: dict[str, Any] | None) -> str:
    """An instruction for ``tool_choice`` any/tool and for disabled parallel calls ('' when none applies)."""
    choice = tool_choice or {}
    lines = []
    if choice.get("type") == "any":
        lines.append("You must call at least one tool in your reply.")
    elif choice.get("type") == "tool":
        lines.append(f"You must call the tool {choice.get('name')!s} in your reply.")
    if choice.get("disable_parallel_tool_use"):
        lines.append("Call at most one tool.")
    return " ".join(lines)


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic tool definitions in the OpenAI function format chat templates expect."""
    return [
        {"type": "function", "function": {
            "name": tool["name"],
            "description": tool.get("description", ""),
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
        }}
        for tool in tools
    ]


# -- content blocks -------------------------------------------------------------------------------------

def content_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [block for block in content or [] if isinstance(block, dict)]


def plain_text(content: Any, document: Callable[[dict[str, Any]], str] = document_text,
               image: Callable[[dict[str, Any]], str] = image_note) -> str:
    """Text of simple content (text, images, documents): what tool results and system items hold.

    ``document`` and ``image`` say what those blocks become (by default their text, and a note).
    """
    parts = []
    for block in content_blocks(content):
        kind = block.get("type")
        if kind == "text":
            parts.append(block.get("text", ""))
        elif kind == "image":
            parts.append(image(block))
        elif kind == "document":
            parts.append(document(block))
    return "\n".join(part for part in parts if part)


def tool_call_text(name: str, arguments: Any) -> str:
    """How a past tool call appears in an assistant turn (Hermes format, what the parser reads back)."""
    return f"<tool_call>\n{_dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


ERROR_NOTE = "[the tool reported an error]"  # what a failed tool's result starts with, for either target


def tool_response_text(content: Any, is_error: bool = False) -> str:
    body = plain_text(content)
    if is_error:
        body = f"{ERROR_NOTE}\n{body}"
    return f"<tool_response>\n{body}\n</tool_response>"


# -- messages -------------------------------------------------------------------------------------------

class Dialect(Protocol):
    """How one kind of chat target writes each turn: a chat template here, a Chat Completions server
    (``upstream/translate.py``). :func:`chat_messages` walks the conversation once for both."""

    def system_item(self, content: Any) -> str: ...

    def user_messages(self, content: Any) -> list[dict[str, Any]]: ...

    def assistant_message(self, content: Any) -> dict[str, Any] | None: ...


def chat_messages(request: MessagesRequest, system: str, dialect: Dialect) -> list[dict[str, Any]]:
    """The one Anthropic → OpenAI-style chat conversion: ``system`` leads, then every turn in order,
    as ``dialect`` writes it (turns it makes nothing of are left out)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in request.messages:
        role = message.get("role")
        if role == "system":
            text = dialect.system_item(message.get("content"))
            if text:
                messages.append({"role": "system", "content": text})
        elif role == "user":
            messages.extend(dialect.user_messages(message.get("content")))
        elif role == "assistant":
            rendered = dialect.assistant_message(message.get("content"))
            if rendered is not None:
                messages.append(rendered)
    return messages


class _TemplateDialect:
    """Turns for a chat template: Hermes text for tools, or OpenAI fields where the template renders them."""

    def __init__(self, native: bool) -> None:
        self.native = native
        self.names: dict[str, str] = {}  # tool_use id → tool name, for native tool messages

    def system_item(self, content: Any) -> str:
        return plain_text(content)

    def user_messages(self, content: Any) -> list[dict[str, Any]]:
        return _user_messages(content, self.native, self.names)

    def assistant_message(self, content: Any) -> dict[str, Any] | None:
        return _assistant_message(content, self.native, self.names)


def _user_messages(content: Any, native: bool, names: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    parts: list[str] = []
    for block in content_blocks(content):
        kind = block.get("type")
        if kind == "tool_result":
            if native:
                call_id = block.get("tool_use_id", "")
                body = plain_text(block.get("content"))
                if block.get("is_error"):
                    body = f"{ERROR_NOTE}\n{body}"
                out.append({"role": "tool", "tool_call_id": call_id, "name": names.get(call_id, ""), "content": body})
            else:
                parts.append(tool_response_text(block.get("content"), bool(block.get("is_error"))))
        else:
            text = plain_text([block])
            if text:
                parts.append(text)
    if parts:
        out.append({"role": "user", "content": "\n".join(parts)})
    return out


def _assistant_message(content: Any, native: bool, names: dict[str, str]) -> dict[str, Any] | None:
    parts: list[str] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for block in content_blocks(content):
        kind = block.get("type")
        if kind == "thinking" and block.get("thinking"):
            reasoning.append(block["thinking"])
        elif kind == "text" and block.get("text"):
            parts.append(block["text"])
        elif kind in ("tool_use", "server_tool_use"):
            names[block.get("id", "")] = block.get("name", "")
            if native:
                calls.append({"id": block.get("id", ""), "type": "function",
                              "function": {"name": block.get("name", ""), "arguments": block.get("input") or {}}})
            else:
                parts.append(tool_call_text(block.get("name", ""), block.get("input") or {}))
    if not parts and not calls and not reasoning:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(parts)}
    if calls:
        message["tool_calls"] = calls
    if reasoning:  # reasoning templates (Qwen3…) show or drop it themselves; others never read it
        message["reasoning_content"] = "\n".join(reasoning)
    return message


def _merge_consecutive(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join consecutive user/assistant/system turns, as the Anthropic API does; tool turns stay apart."""
    merged: list[dict[str, Any]] = []
    for message in messages:
        last = merged[-1] if merged else None
        if last is not None and last["role"] == message["role"] and message["role"] != "tool":
            joined = dict(last)
            joined["content"] = "\n\n".join(p for p in (last["content"], message["content"]) if p)
            if message.get("tool_calls"):
                joined["tool_calls"] = [*last.get("tool_calls", []), *message["tool_calls"]]
            merged[-1] = joined
        else:
            merged.append(dict(message))
    return merged


def _system_note(text: str) -> str:
    return f"<system>\n{text}\n</system>"


def _fold_system(messages: list[dict[str, Any]], keep_leading: bool) -> list[dict[str, Any]]:
    """For templates that reject or drop system turns: move their text into the next user turn."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for index, message in enumerate(messages):
        if message["role"] == "system" and not (keep_leading and index == 0):
            pending.append(_system_note(message["content"]))
            continue
        if message["role"] == "user" and pending:
            message = {**message, "content": "\n\n".join([*pending, message["content"]])}
            pending = []
        out.append(message)
    if pending:  # nothing after them: attach to the last user turn, or stand alone as one
        users = [i for i, m in enumerate(out) if m["role"] == "user"]
        if users:
            last = out[users[-1]]
            out[users[-1]] = {**last, "content": "\n\n".join([last["content"], *pending])}
        else:
            out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


def to_chat_messages(request: MessagesRequest, info: ModelInfo) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The chat-template messages and (for native templates) OpenAI-style tools for ``request``."""
    caps = template_capabilities(info.chat_template)
    tools = request.tools if (request.tool_choice or {}).get("type") != "none" else []
    native = bool(tools) and caps.native_tools

    system = system_text(request)
    extra = [] if not tools or native else [render_tools_text(tools)]
    if tools and tool_choice_text(request.tool_choice):
        extra.append(tool_choice_text(request.tool_choice))
    system = "\n\n".join(part for part in (system, *extra) if part)

    messages = _merge_consecutive(chat_messages(request, system, _TemplateDialect(native)))
    if not caps.system:
        messages = _fold_system(messages, keep_leading=False)
    elif not caps.inline_system:
        messages = _fold_system(messages, keep_leading=True)
    return messages, (openai_tools(tools) if native else None)


def render_prompt(request: MessagesRequest, info: ModelInfo) -> str:
    """The prompt text for ``request``; a trailing assistant turn is continued (Anthropic prefill)."""
    messages, tools = to_chat_messages(request, info)
    prefill = bool(messages) and messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls")
    return render_chat(
        info.chat_template,
        messages,
        tools=tools,
        bos_token=info.bos_token,
        eos_token=info.eos_token,
        add_generation_prompt=not prefill,
        continue_final_message=prefill,
        options=template_options(request.thinking, request.effort) if is_reasoning_template(info.chat_template) else None,
    )
