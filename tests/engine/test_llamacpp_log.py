"""Once a model is loaded, llama.cpp's log reaches no Python code: a CUDA build logs from inside every
``llama_decode``, and a Python callback there waits for the GIL while HTTP threads stream.

Real llama-cpp-python and the embedded model. llama-cpp-python's own callback is swapped for a counting
one (the same kind of ctypes callback), so the tests see exactly when llama.cpp calls into Python.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest

from pensieve_server.engine import llamacpp_log
from pensieve_server.engine.base import SamplingParams
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.models.store import ModelStore


@pytest.fixture
def python_messages(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """llama-cpp-python's callback replaced by one that records what llama.cpp sends to Python."""
    seen: list[bytes] = []

    @llama_cpp.llama_log_callback
    def counting(level: int, text: bytes, user_data: Any) -> None:
        seen.append(text)

    monkeypatch.setattr(llama_cpp._logger, "llama_log_callback", counting)
    yield seen
    llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))  # the real one again


def log_from_llama_cpp(backend: LlamaCppBatchBackend) -> None:
    """Make llama.cpp log outside any load: a context made and freed (it reports its sizes)."""
    ctx = llama_cpp.llama_init_from_model(backend._llama.model, backend._llama.context_params)
    assert ctx, "llama.cpp could not make a context"
    llama_cpp.llama_free(ctx)


def test_after_a_load_llama_cpp_logs_to_a_native_no_op_not_to_python(
        model_store: ModelStore, python_messages: list[bytes]) -> None:
    backend = LlamaCppBatchBackend.load_batched(model_store.embedded(), parallel=2, context_length=1024)
    try:
        assert python_messages, "llama.cpp sent nothing to Python while loading: the load was not watched"
        assert llamacpp_log.installed_callback_address(llama_cpp) == llamacpp_log.native_noop_address()
        during_load = len(python_messages)
        log_from_llama_cpp(backend)
        assert len(python_messages) == during_load, python_messages[during_load:][:5]
        prompt = backend.tokenize("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        backend.admit("a", prompt, SamplingParams(max_tokens=4, temperature=0.0))
        for _ in range(4):  # decodes (a CUDA build logs inside each): nothing may reach Python
            backend.step()
        assert len(python_messages) == during_load
    finally:
        backend.close()


def test_a_load_gets_python_logging_back_for_its_duration(python_messages: list[bytes]) -> None:
    with llamacpp_log.python_log_while_loading(llama_cpp):
        with llamacpp_log.python_log_while_loading(llama_cpp):  # concurrent loads: the outer one still logs
            pass
        python_callback = ctypes.cast(llama_cpp._logger.llama_log_callback, ctypes.c_void_p).value
        assert llamacpp_log.installed_callback_address(llama_cpp) == python_callback
    assert llamacpp_log.installed_callback_address(llama_cpp) == llamacpp_log.native_noop_address()

