"""Render a model's chat template (HF / GGUF jinja) the way transformers' ``apply_chat_template`` does.

Models are trained on exactly what their template produces, so we match transformers' environment:
a sandboxed, immutable jinja2 environment with ``trim_blocks``/``lstrip_blocks``, the ``tojson``
filter, ``raise_exception``, ``strftime_now`` and the ``{% generation %}`` tag. Compiled templates
and probed capabilities are cached per template string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pensieve_server.anthropic.errors import InvalidRequest

# The template a model without one of its own is served with (the engines warn when they fall back to it).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The end-of-turn markers of the common chat templates (ChatML, Llama 3, Phi, Gemma, ...): an engine
# stops on each one that is a single control token in the model's vocabulary.
END_OF_TURN_TEXTS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>")


class ChatTemplateError(InvalidRequest):
    """The chat template failed or rejected the conversation.

    A 400 rather than a 500: Claude Code retries 5xx for minutes but shows a 400's message at once.
    """


class _TemplateRaised(jinja2.TemplateError):
    """``raise_exception(...)`` called by the template itself (e.g. "roles must alternate")."""


class _GenerationTag(Extension):
    """transformers' ``{% generation %}…{% endgeneration %}`` marks assistant text; render it as-is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_passthrough"), [], [], body).set_lineno(lineno)

    def _passthrough(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Same defaults as transformers (not jinja's HTML-safe tojson): templates rely on them.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_environment() -> jinja2.Environment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _make_environment()


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    try:
        return _ENV.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the model's chat template is invalid (line {exc.lineno}): {exc.message}") from None


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    options: dict[str, Any] | None = None,
) -> str:
    """Render ``messages`` (``{"role", "content", ...}`` dicts) with ``template``.

    ``continue_final_message`` leaves the last (assistant) message open so the model continues it,
    like transformers: render it closed, then cut right after its content.
    """
    compiled = _compile(template)
    try:
        text = compiled.render(
            messages=messages,
            tools=tools or None,
            add_generation_prompt=add_generation_prompt and not continue_final_message,
            bos_token=bos_token,
            eos_token=eos_token,
            **(options or {}),  # e.g. enable_thinking for reasoning templates
        )
    except _TemplateRaised as exc:
        raise ChatTemplateError(f"the model's chat template rejected the conversation: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template failed: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ChatTemplateError(f"the model's chat template failed: {type(exc).__name__}: {exc}") from None
    if continue_final_message and messages:
        final = messages[-1].get("content")
        if isinstance(final, str) and final.strip():
            end = text.rfind(final.rstrip())
            if end >= 0:
                return text[: end + len(final.rstrip())]
    return text


_TOOLS_WORD = re.compile(r"\btools\b")


def template_supports_tools(template: str) -> bool:
    """Whether the template mentions ``tools`` at all (a cheap, static check)."""
    return bool(_TOOLS_WORD.search(template))


@dataclass(frozen=True)
class TemplateCapabilities:
    """What a template does with roles and tools, found by rendering small probe conversations."""

    system: bool  # renders a leading system message
    inline_system: bool  # renders system messages after the first turn, in place
    native_tools: bool  # renders ``tools``, assistant ``tool_calls`` and ``role: "tool"`` results


_PROBE_ID = "toolu_01PensieveProbeCallId0001"
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "pensieve_probe_fn",
        "description": "Probe.",
        "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}, "required": ["probe_arg"]},
    },
}


def _renders(template: str, messages: list[dict[str, Any]], needles: tuple[str, ...],
             tools: list[dict[str, Any]] | None = None) -> bool:
    try:
        text = render_chat(template, messages, tools=tools)
    except InvalidRequest:
        return False
    return all(needle in text for needle in needles)


@lru_cache(maxsize=16)
def template_capabilities(template: str) -> TemplateCapabilities:
    """Probe ``template`` once: which roles survive rendering, and whether tools render natively."""
    system = _renders(template, [
        {"role": "system", "content": "PENSIEVE_PROBE_SYSTEM"},
        {"role": "user", "content": "hi"},
    ], ("PENSIEVE_PROBE_SYSTEM",))
    inline_system = system and _renders(template, [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "PENSIEVE_PROBE_INLINE"},
        {"role": "user", "content": "again"},
    ], ("PENSIEVE_PROBE_INLINE", "again"))
    native_tools = template_supports_tools(template) and _renders(template, [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [{
            "id": _PROBE_ID, "type": "function",
            "function": {"name": "pensieve_probe_fn", "arguments": {"probe_arg": "PENSIEVE_PROBE_ARG"}},
        }]},
        {"role": "tool", "tool_call_id": _PROBE_ID, "name": "pensieve_probe_fn", "content": "PENSIEVE_PROBE_RESULT"},
    ], ("pensieve_probe_fn", "PENSIEVE_PROBE_ARG", "PENSIEVE_PROBE_RESULT"), tools=[_PROBE_TOOL])
    return TemplateCapabilities(system=system, inline_system=inline_system, native_tools=native_tools)
