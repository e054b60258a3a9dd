"""The workloads every contender replays: deterministic prompts, identical for all of them.

Every measured request starts its system message with a salt (``Session 12345678.``) so no
server can reuse a cached prefix from an earlier request: each prefill is a real prefill. The
salt is derived from the workload, repetition and stream, so every contender sees the same texts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MAX_TOKENS = 64
SWEEP_TARGETS = (512, 2048, 6000)
QUICK_SWEEP_TARGETS = (512,)
CONCURRENCY = (1, 4, 8)
QUICK_CONCURRENCY = (1, 4)
REPETITIONS = 3
QUICK_REPETITIONS = 1
MLX_REPETITIONS = 1  # MLX prefills ~14 tok/s on a 2-core x86 CPU: a 6,000-token prompt takes minutes
MLX_CPU_MAX_PROMPT = 512  # ...and so, on a CPU, MLX gets no longer prompts (and no Claude Code replay)
CLAUDE_CODE_PROMPT_TOKENS = 5858  # the captured request after fitting into SmolLM2's 8k context

SHORT_SYSTEM = "You are a helpful assistant."
SHORT_USER = "Write a long story about a robot who learns to paint."
SWEEP_SYSTEM = "You are a careful assistant who summarizes notes."
SWEEP_INTRO = "Here are my notes from this week."
SWEEP_INSTRUCTION = "Summarize the notes above in detail, point by point."
FILLER_SEED = 1729
FIXTURE = Path("tests/fixtures/claude-code/tool-roundtrip-followup.json")

Render = Callable[[list[dict[str, str]]], str]
Count = Callable[[str], int]

_WORD_TEXT = (
    "archive river lantern orchard valley engine harbor meadow signal copper garden winter bridge "
    "market ledger compass forest tower season letter window station village quarry canal mill "
    "north south east west small quiet bright early late careful steady narrow ancient modern "
    "keeps records measures repairs carries watches follows opens closes builds counts gathers "
    "the a of in on near under beside after before with through across every each some many "
    "farmer clerk weaver pilot miller baker teacher keeper builder painter sailor doctor student "
    "stone water bread salt wool paper iron glass timber grain clay rope oil wax ink thread"
)
_WORDS = tuple(_WORD_TEXT.split())


def chatml(messages: list[dict[str, str]]) -> str:
    """Plain ChatML (SmolLM2's template when a system message is present); used without a model."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


@dataclass(frozen=True)
class ChatPrompt:
    """One chat request: a system and a user message, rendered through the model's chat template."""

    key: str
    system: str
    user: str
    text: str
    prompt_tokens: int
    max_tokens: int

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "prompt_tokens": self.prompt_tokens, "max_tokens": self.max_tokens,
                "chars": len(self.text), "sha256": hashlib.sha256(self.text.encode()).hexdigest()[:16]}


@dataclass(frozen=True)
class PromptBuilder:
    """Renders messages with the chat template and counts tokens with the model's tokenizer."""

    render: Render
    count: Count
    max_tokens: int = MAX_TOKENS

    def build(self, key: str, system: str, user: str) -> ChatPrompt:
        text = self.render([{"role": "system", "content": system}, {"role": "user", "content": user}])
        return ChatPrompt(key, system, user, text, self.count(text), self.max_tokens)

    def salted(self, prompt: ChatPrompt, salt: str) -> ChatPrompt:
        """The same prompt with ``salt`` at the very start, so no earlier prefix can be reused."""
        return self.build(prompt.key, f"Session {salt}. {prompt.system}", prompt.user)


def salt_for(*parts: object) -> str:
    """A deterministic 8-digit salt (digits tokenize one per token, so every salt costs the same)."""
    return f"{zlib.crc32('/'.join(map(str, parts)).encode()) % 10**8:08d}"


def filler_sentences(count: int, seed: int = FILLER_SEED) -> list[str]:
    """``count`` deterministic pseudo-English sentences (the same on every machine and Python)."""
    rng = random.Random(seed)
    sentences = []
    for index in range(count):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 16))]
        sentences.append(f"Note {index + 1}: " + " ".join(words).capitalize() + ".")
    return sentences


def sweep_user(sentences: list[str]) -> str:
    return f"{SWEEP_INTRO}\n\n" + "\n".join(sentences) + f"\n\n{SWEEP_INSTRUCTION}"


def sweep_prompt(builder: PromptBuilder, target: int) -> ChatPrompt:
    """The filler prompt whose rendered length is the smallest at or above ``target`` tokens.

    The salt is included while sizing, so measured (salted) requests have about ``target`` tokens.
    """
    pool = filler_sentences(max(16, target // 6))
    while builder.salted(builder.build("", SWEEP_SYSTEM, sweep_user(pool)), salt_for("size")).prompt_tokens < target:
        pool = filler_sentences(len(pool) * 2)
    low, high = 1, len(pool)
    while low < high:
        mid = (low + high) // 2
        probe = builder.salted(builder.build("", SWEEP_SYSTEM, sweep_user(pool[:mid])), salt_for("size"))
        if probe.prompt_tokens >= target:
            high = mid
        else:
            low = mid + 1
    return builder.build(f"sweep-{target}", SWEEP_SYSTEM, sweep_user(pool[:low]))


@dataclass(frozen=True)
class Plan:
    """What to run: the chat prompts, how often, the concurrency levels, and the Claude Code replay."""

    repetitions: int
    short: ChatPrompt
    sweep: tuple[ChatPrompt, ...]
    concurrency: tuple[int, ...]
    replay: bool = True
    notes: tuple[str, ...] = field(default=())

    @property
    def chat_prompts(self) -> tuple[ChatPrompt, ...]:
        return (self.short, *self.sweep)

    def for_engine(self, engine: str, quick: bool, mlx_repetitions: int = MLX_REPETITIONS,
                   mlx_max_prompt: int = 0) -> Plan:
        """MLX is slow on a Linux CPU: --quick gives it only the short chat, a full run fewer repetitions
        and, with ``mlx_max_prompt``, no prompt longer than that (0: no limit, as on Metal)."""
        if engine != "mlx":
            return self
        if quick:
            return replace(self, sweep=(), concurrency=(), replay=False,
                           notes=(*self.notes, "--quick: MLX runs only the short chat (slow on CPU)"))
        plan = self
        if mlx_repetitions < self.repetitions:
            plan = replace(plan, repetitions=mlx_repetitions,
                           notes=(*plan.notes, f"MLX: {mlx_repetitions} repetition(s) (--mlx-repetitions)"))
        if mlx_max_prompt:
            sweep = tuple(p for p in plan.sweep if p.prompt_tokens <= mlx_max_prompt + 64)
            replay = plan.replay and mlx_max_prompt >= CLAUDE_CODE_PROMPT_TOKENS
            plan = replace(plan, sweep=sweep, replay=replay,
                           notes=(*plan.notes, f"MLX: prompts of at most {mlx_max_prompt} tokens, "
                                  "no Claude Code replay (--mlx-max-prompt; slow on CPU)"))
        return plan

    def describe(self) -> dict[str, Any]:
        return {"repetitions": self.repetitions, "concurrency": list(self.concurrency), "replay": self.replay,
                "prompts": [p.describe() for p in self.chat_prompts], "notes": list(self.notes)}


def build_plan(builder: PromptBuilder, quick: bool, repetitions: int | None = None) -> Plan:
    short = builder.build("short", SHORT_SYSTEM, SHORT_USER)
    targets = QUICK_SWEEP_TARGETS if quick else SWEEP_TARGETS
    reps = repetitions or (QUICK_REPETITIONS if quick else REPETITIONS)
    return Plan(reps, short, tuple(sweep_prompt(builder, t) for t in targets),
                QUICK_CONCURRENCY if quick else CONCURRENCY)


# -- the captured Claude Code request ---------------------------------------------------------------

_DROP_HEADERS = {"host", "content-length", "accept-encoding", "connection", "authorization", "x-api-key"}
_BILLING = "x-anthropic-billing-header:"
_CCH = re.compile(r"cch=[^;\s]*")


@dataclass(frozen=True)
class CapturedRequest:
    """A request as Claude Code sent it: path (with query), headers and JSON body."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def find_fixture(repo_root: Path) -> Path | None:
    """The captured request committed with the tests, if present."""
    path = repo_root / FIXTURE
    return path if path.is_file() else None


def load_captured(path: Path) -> CapturedRequest:
    data = json.loads(path.read_text(encoding="utf-8"))
    return CapturedRequest(data["path"], dict(data["headers"]), data["body"])


def with_cch(text: str, value: str) -> str:
    """The billing header line with its ``cch=`` value set (appended when the capture has none)."""
    if _CCH.search(text):
        return _CCH.sub(f"cch={value}", text)
    return text.rstrip() + ("" if text.rstrip().endswith(";") else ";") + f" cch={value};"


def replay_request(captured: CapturedRequest, cch: str, token: str, max_tokens: int) -> CapturedRequest:
    """The capture as Claude Code would resend it: a new ``cch=``, our token, a bounded max_tokens."""
    body = copy.deepcopy(captured.body)
    body["max_tokens"] = max_tokens
    body["stream"] = True
    for block in body.get("system") or []:
        if isinstance(block, dict) and str(block.get("text", "")).startswith(_BILLING):
            block["text"] = with_cch(block["text"], cch)
    headers = {k: v for k, v in captured.headers.items() if k.lower() not in _DROP_HEADERS}
    headers["Authorization"] = f"Bearer {token}"
    return CapturedRequest(captured.path, headers, body)
