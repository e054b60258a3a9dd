"""A model the pool loads is ready for Claude Code's first request: llguidance's view of its vocabulary
is built at load (on a helper thread), not inside the first request with tools.

On an H200 host that build took 0.14 s of a 0.4 s cold Claude Code prefill, and of the first turn after
every restart. Real pool, real llama.cpp, embedded model.
"""

from __future__ import annotations

import time

from pensieve_server.engine.pool import ModelPool
from pensieve_server.models.embedded import EMBEDDED_NAME
from pensieve_server.models.store import ModelStore
from pensieve_server.settings import load_settings


def test_a_loaded_model_builds_its_grammar_tokenizer_before_any_request() -> None:
    settings = load_settings({"engine": "llamacpp", "context_length": 2048})
    pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
    try:
        grammars = pool.get(EMBEDDED_NAME).backend._grammars
        assert grammars is not None, "the load started the build"
        deadline = time.monotonic() + 120
        while grammars._tokenizer is None and grammars._failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert grammars._failure is None, f"the installed llguidance reads this vocabulary: {grammars._failure}"
        assert grammars._tokenizer is not None
    finally:
        pool.close()


def test_closing_a_model_while_its_tokenizer_is_built_waits_for_the_build() -> None:
    """The build reads the model's vocabulary: freeing the model under it aborted the process."""
    settings = load_settings({"engine": "llamacpp", "context_length": 2048})
    for _ in range(3):
        pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
        backend = pool.get(EMBEDDED_NAME).backend
        pool.close()  # at once: the build is still running
        builder = backend._grammars._builder
        assert builder is not None and not builder.is_alive()
