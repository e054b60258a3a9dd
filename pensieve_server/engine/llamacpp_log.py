"""llama.cpp's log while serving goes to a native no-op, so ``llama_decode`` never calls into Python.

llama-cpp-python sends every llama.cpp and ggml message through a Python callback (printing only errors
when ``verbose=False``). A CUDA build of ggml logs a debug line on every CUDA graph reuse, from inside
``llama_decode``, so each decode took the GIL once. Measured on the H200 (benchmarks/results/
2026-12-03-h200-log-sampling-order.md) that cost no visible step time; the sink stays because it is
free. Between loads the callback is a C function that ignores its arguments;
while a model or a context loads, llama-cpp-python's own callback is back, so llama.cpp's errors there (a
context too large for memory, say) still reach stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_loads_in_progress = 0
_native_sink: Any = None  # the ctypes function pointer handed to llama.cpp; kept alive here


def native_noop_address() -> int | None:
    """libc's ``abs``: it reads one integer register and touches no memory, so called as
    ``void (*)(int level, const char *text, void *user_data)`` it does nothing (the caller cleans up, and
    the result is ignored). None where no C library can be opened."""
    try:
        libc = ctypes.CDLL("msvcrt") if sys.platform == "win32" else ctypes.CDLL(None)
        return ctypes.cast(libc.abs, ctypes.c_void_p).value
    except (OSError, AttributeError, TypeError):
        return None


def _python_callback(llama_cpp: Any) -> Any:
    """llama-cpp-python's own callback (None if this version keeps it elsewhere)."""
    logger_module = getattr(llama_cpp, "_logger", None)
    return getattr(logger_module, "llama_log_callback", None)


def _install(llama_cpp: Any, callback: Any) -> None:
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def silence_while_serving(llama_cpp: Any) -> bool:
    """Send llama.cpp's log to the native no-op unless a load is in progress; False when not possible."""
    global _native_sink
    with _lock:
        if _loads_in_progress:
            return False
        if _native_sink is None:
            address = native_noop_address()
            if address is None or _python_callback(llama_cpp) is None:
                return False
            _native_sink = llama_cpp.llama_log_callback(address)
        _install(llama_cpp, _native_sink)
        return True


@contextlib.contextmanager
def python_log_while_loading(llama_cpp: Any) -> Iterator[None]:
    """llama-cpp-python's callback during a load (its error lines reach stderr), the no-op after the last
    of concurrent loads ends."""
    global _loads_in_progress
    callback = _python_callback(llama_cpp)
    with _lock:
        _loads_in_progress += 1
        if callback is not None:
            _install(llama_cpp, callback)
    try:
        yield
    finally:
        with _lock:
            _loads_in_progress -= 1
        if not silence_while_serving(llama_cpp):
            log.debug("llama.cpp's log stays with llama-cpp-python's Python callback")


def installed_callback_address(llama_cpp: Any) -> int | None:
    """The address of the callback llama.cpp calls now (for doctor and tests)."""
    callback = llama_cpp.llama_log_callback()
    user_data = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(callback), ctypes.byref(user_data))
    return ctypes.cast(callback, ctypes.c_void_p).value
