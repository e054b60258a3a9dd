"""llama.cpp's libraries load before numpy's.

With numpy imported first, loading any model with a CUDA build of llama-cpp-python 0.3.36 crashed
with SIGSEGV in ``std::regex`` while llama.cpp built its tokenizer (an H200, nvcc 13.0:
benchmarks/results/2026-12-02-h200-streams.md). Pensieve's CLI imports numpy while it builds its
parser (the cache command reads saved states), so the commands that load a model call this first.
Importing llama_cpp takes up to a second on a slow CPU, so the other commands do not.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

# CLI commands that load a model in their own process (doctor's self-test does too).
MODEL_COMMANDS = frozenset({"serve", "doctor"})


def loads_models(argv: Sequence[str]) -> bool:
    """Whether the CLI command in ``argv`` (without the program name) loads a model in this process."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return command in MODEL_COMMANDS


def load_llama_cpp_first() -> bool:
    """Import llama_cpp now, unless numpy is loaded already or llama-cpp-python is not installed
    (Apple Silicon's default install). True when llama_cpp is loaded afterwards."""
    if "llama_cpp" in sys.modules:
        return True
    if "numpy" in sys.modules or importlib.util.find_spec("llama_cpp") is None:
        return False
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken build raises more than ImportError; the engine reports it
        return False
    return True
