"""The product's required parts, imported for tests: a missing one fails the test, never skips it.

llama.cpp is required on every machine except Apple Silicon, where it is the opt-in ``llamacpp`` extra
(pyproject's markers; tests/test_dependency_markers.py): only there may a test skip without it.
"""

from __future__ import annotations

import importlib
import platform
import sys
from types import ModuleType

import pytest


def apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def require_llama_cpp() -> ModuleType:
    """``llama_cpp``; its ImportError fails the caller, except on Apple Silicon without the extra (a skip)."""
    if apple_silicon():
        return pytest.importorskip("llama_cpp", reason="llama.cpp is the opt-in `llamacpp` extra on Apple Silicon")
    return importlib.import_module("llama_cpp")
