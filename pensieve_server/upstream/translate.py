"""Anthropic Messages ⇄ OpenAI Chat Completions, as pure functions and one small stream state machine.

Request (:func:`to_openai_request`):

- ``system`` blocks → one leading ``system`` message (Claude Code's per-request billing header line
  removed, so the upstream's prefix cache keeps hitting); inline ``role: "system"`` items stay in
  place as ``system`` messages;
- text → string content; images → ``image_url`` parts (data URLs); documents → their text;
- ``tool_use`` → the assistant message's ``tool_calls`` (arguments as a JSON string);
- ``tool_result`` → ``role: "tool"`` messages right after that assistant message (content flattened
  to text, ``is_error`` noted in front), then the rest of the user turn;
- thinking blocks → the assistant message's ``reasoning_content``; tools → ``functions`` with
  ``input_schema`` as ``parameters``;
- ``tool_choice`` auto/any/tool/none → ``"auto"``/``"required"``/named function/``"none"``,
  ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``;
- ``stop_sequences`` → ``stop``; ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` as given.

Response (:class:`ChunkTranslator`): streamed ``chat.completion.chunk`` objects (or one whole
``chat.completion``, see :func:`response_as_chunk`) → the tool-call parser's pieces, which the
:class:`~pensieve_server.anthropic.stream.MessageAssembler` turns into Anthropic events. Argument
deltas of a streamed tool call become ``input_json_delta`` events as they arrive. ``finish_reason``
stop/length/tool_calls/content_filter → end_turn/max_tokens/tool_use/refusal; ``reasoning_content``
(or ``reasoning``) deltas → thinking blocks; ``usage`` (with
``prompt_tokens_details.cached_tokens``) → the Completion's token counts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pensieve_server.anthropic.errors import InternalError
from pensieve_server.anthropic.render import (
    ERROR_NOTE,
    chat_messages,
    content_blocks,
    neutralise_system_text,
    plain_text,
    system_text,
)
from pensieve_server.anthropic.thinking import ThinkingPiece
from pensieve_server.anthropic.tools import (
    Piece,
    TextPiece,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    new_tool_use_id,
)
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.engine.base import Completion

log = logging.getLogger(__name__)

FINISH_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# -- request -------------------------------------------------------------------------------------------

def _tool_image_note(block: dict[str, Any]) -> str:
    return "[image omitted: an OpenAI-style tool message carries text only]"


def flatten_text(content: Any) -> str:
    """Text of simple content (what tool results and system items hold); documents give their text
    (plain text, PDF), images a note (user turns forward them as ``image_url`` parts instead)."""
    return plain_text(content, image=_tool_image_note)


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _user_content(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    """A plain string when the turn is all text (what every server accepts), else content parts."""
    parts: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "image":
            image = _image_part(block)
            parts.append(image if image else {"type": "text", "text": "[image]"})
        elif kind in ("text", "document"):
            text = flatten_text([block])
            if text:
                parts.append({"type": "text", "text": text})
    if not parts:
        return None
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def tool_message(block: dict[str, Any]) -> dict[str, Any]:
    """A ``tool_result`` block as a ``role: "tool"`` message."""
    body = flatten_text(block.get("content"))
    if block.get("is_error"):
        body = f"{ERROR_NOTE}\n{body}" if body else ERROR_NOTE
    return {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": body}


def _user_messages(content: Any) -> list[dict[str, Any]]:
    blocks = content_blocks(content)
    out = [tool_message(block) for block in blocks if block.get("type") == "tool_result"]
    rest = _user_content([block for block in blocks if block.get("type") != "tool_result"])
    if rest is not None:
        out.append({"role": "user", "content": rest})
    return out


def _arguments(value: Any) -> str:
    return json.dumps(value if isinstance(value, dict) else {}, ensure_ascii=False, separators=(",", ":"))


def _assistant_message(content: Any) -> dict[str, Any] | None:
    texts, calls, reasoning = [], [], []
    for block in content_blocks(content):
        kind = block.get("type")
        if kind == "thinking" and block.get("thinking"):
            reasoning.append(block["thinking"])
        elif kind == "text" and block.get("text"):
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append({"id": block.get("id", ""), "type": "function",
                          "function": {"name": block.get("name", ""), "arguments": _arguments(block.get("input"))}})
    if not texts and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
    if calls:
        message["tool_calls"] = calls
    if reasoning:  # the reasoning_content servers send back in, where they keep it (llama-server, vLLM)
        message["reasoning_content"] = "\n".join(reasoning)
    return message


class _ChatCompletionsDialect:
    """Turns as a Chat Completions server takes them (see the module docstring for the mapping)."""

    def system_item(self, content: Any) -> str:
        return neutralise_system_text(flatten_text(content)).strip()

    def user_messages(self, content: Any) -> list[dict[str, Any]]:
        return _user_messages(content)

    def assistant_message(self, content: Any) -> dict[str, Any] | None:
        return _assistant_message(content)


def to_openai_messages(request: MessagesRequest) -> list[dict[str, Any]]:
    """The conversation as Chat Completions messages, through the one converter render.py uses too."""
    return chat_messages(request, system_text(request), _ChatCompletionsDialect())


def to_openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic custom tools as OpenAI functions; server tools (web search…) have no schema and are skipped."""
    out = []
    for tool in tools:
        if "input_schema" not in tool:
            continue
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def to_openai_tool_choice(choice: dict[str, Any] | None) -> str | dict[str, Any] | None:
    kind = (choice or {}).get("type")
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": (choice or {}).get("name", "")}}
    if kind in ("auto", "none"):
        return kind
    return None


def to_openai_request(request: MessagesRequest, model: str, *, stream: bool = True) -> dict[str, Any]:
    """The Chat Completions body for ``request``, asking ``model``; streamed with usage by default."""
    body: dict[str, Any] = {"model": model, "messages": to_openai_messages(request), "max_tokens": request.max_tokens}
    tools = to_openai_tools(request.tools)
    if tools:
        body["tools"] = tools
        choice = to_openai_tool_choice(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
        if (request.tool_choice or {}).get("disable_parallel_tool_use"):
            body["parallel_tool_calls"] = False
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    for key in ("temperature", "top_p", "top_k"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# -- response ------------------------------------------------------------------------------------------

@dataclass
class _Call:
    """One tool call being streamed: OpenAI sends its id and name first, then argument fragments."""

    id: str = ""
    name: str = ""
    arguments: str = ""
    started: bool = False
    closed: bool = False


@dataclass
class ChunkTranslator:
    """Chat Completions chunks → tool-call-parser pieces, plus the usage and stop reason at the end.

    Tool calls arrive one after another (every server streams them in index order): a new index
    closes the call before it. A call opens once its name is known; argument fragments that came
    before the name are sent as the first delta.
    """

    stop_sequences: tuple[str, ...] = ()
    finish_reason: str | None = None
    matched_stop: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    deltas: int = 0  # content/argument fragments seen: the output estimate when usage is missing
    _calls: dict[int, _Call] = field(default_factory=dict)
    _current: int | None = None
    show_thinking: bool = True  # reasoning deltas become thinking blocks only when the request asked for them

    def feed(self, chunk: dict[str, Any]) -> list[Piece]:
        """The pieces in one chunk; a chunk of the wrong shape (a string where an object belongs …) is the
        upstream's fault and ends the answer with a clean error, not a traceback."""
        try:
            return self._feed(chunk)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            log.warning("upstream chunk of an unexpected shape: %s: %s", type(exc).__name__, exc)
            raise UpstreamStreamError(f"the upstream sent a chunk Pensieve cannot read ({type(exc).__name__}: "
                                      f"{str(exc)[:200]})") from None

    def _feed(self, chunk: dict[str, Any]) -> list[Piece]:
        if isinstance(chunk.get("error"), (dict, str)):
            raise UpstreamStreamError(_error_text(chunk["error"]))
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        out: list[Piece] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")  # vLLM, llama-server, Ollama
            if isinstance(reasoning, str) and reasoning:
                self.deltas += 1
                if self.show_thinking:
                    out.extend(self._close_current())
                    out.append(ThinkingPiece(reasoning))
            if isinstance(delta.get("content"), str) and delta["content"]:
                self.deltas += 1
                out.extend(self._close_current())
                out.append(TextPiece(delta["content"]))
            for position, call in enumerate(delta.get("tool_calls") or []):
                if isinstance(call, dict):
                    out.extend(self._on_call(call, position))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
                stop = choice.get("stop_reason")  # vLLM says which stop string matched
                if isinstance(stop, str) and stop in self.stop_sequences:
                    self.matched_stop = stop
        return out

    def _on_call(self, call: dict[str, Any], position: int) -> list[Piece]:
        index = call.get("index", position)
        out: list[Piece] = []
        state = self._calls.get(index)
        if state is not None and state.closed:  # its block is closed: nothing can be added to it any more
            log.warning("upstream sent more of tool call %s after it was closed; dropped", index)
            return out
        if index != self._current:
            out.extend(self._close_current())
            self._current = index
            state = self._calls.setdefault(index, _Call())
        assert state is not None
        function = call.get("function") or {}
        if call.get("id") and not state.id:
            state.id = str(call["id"])
        if function.get("name") and not state.name:
            state.name = str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # a few servers send the object itself
            arguments = json.dumps(arguments, ensure_ascii=False)
        fragment = arguments if isinstance(arguments, str) else ""
        if fragment:
            self.deltas += 1
        state.arguments += fragment
        if state.started:
            if fragment:
                out.append(ToolCallDelta(fragment))
        elif state.name:
            state.started = True
            out.append(ToolCallStart(state.id or new_tool_use_id(), state.name))
            if state.arguments:
                out.append(ToolCallDelta(state.arguments))
        return out

    def _close_current(self) -> list[Piece]:
        if self._current is None:
            return []
        state = self._calls[self._current]
        self._current = None
        state.closed = True
        if not state.started:
            if state.arguments:
                log.warning("upstream sent tool-call arguments without a tool name; dropped")
            return []
        return [ToolCallEnd(_parse_arguments(state.arguments))]

    def finish(self) -> list[Piece]:
        """Close the last tool call (the stream ended)."""
        return self._close_current()

    @property
    def stop_reason(self) -> str:
        if self.matched_stop is not None:
            return "stop_sequence"
        return FINISH_REASONS.get(self.finish_reason or "stop", "end_turn")

    def completion(self, input_estimate: int) -> Completion:
        """The Completion for the assembler: the upstream's usage, else estimates (documented)."""
        usage = self.usage
        prompt = usage.get("prompt_tokens")
        output = usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        input_tokens = prompt if isinstance(prompt, int) else input_estimate
        return Completion(
            stop_reason=self.stop_reason,
            stop_sequence=self.matched_stop,
            input_tokens=input_tokens,
            output_tokens=output if isinstance(output, int) else self.deltas,
            cached_tokens=min(cached, input_tokens) if isinstance(cached, int) else 0,
        )


class UpstreamStreamError(InternalError):
    """The upstream reported an error inside its stream."""


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _parse_arguments(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):
        log.warning("upstream tool-call arguments are not valid JSON: %.200r", raw)
        return {}
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def response_as_chunk(response: dict[str, Any]) -> dict[str, Any]:
    """A whole ``chat.completion`` as one chunk, so non-streamed answers go through the same translator."""
    choices = []
    for choice in _list(response.get("choices")):
        if not isinstance(choice, dict):
            continue
        message = dict(choice["message"]) if isinstance(choice.get("message"), dict) else {}
        calls = [{**call, "index": call.get("index", position)}
                 for position, call in enumerate(_list(message.get("tool_calls"))) if isinstance(call, dict)]
        if calls:
            message["tool_calls"] = calls
        choices.append({**choice, "delta": message})
    chunk: dict[str, Any] = {"choices": choices}
    for key in ("usage", "error"):
        if key in response:
            chunk[key] = response[key]
    return chunk
