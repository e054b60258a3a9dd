"""MLX prompt caches as bytes for the disk store (engine/disk_states.py), and back.

The layout follows mlx-lm's ``save_prompt_cache``/``load_prompt_cache`` (each layer's ``state``
flattened with ``mlx.utils.tree_flatten``, the cache class names, and ``meta_state`` where the
mlx-lm version has one), packed as a JSON header and the raw array bytes, so a cache never passes
through a temporary file. The arrays are copied to NumPy on the engine's thread: MLX is never
called from the writer thread.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

_LENGTH = struct.Struct("<Q")


def snapshot(layers: list[Any]) -> Callable[[], bytes]:
    """Copy ``layers`` now (on the engine thread); the returned function packs the copy into bytes."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    leaves: list[list[Any]] = []
    arrays: list[np.ndarray] = []
    for key, value in tree_flatten([layer.state for layer in layers]):
        if isinstance(value, mx.array):
            dtype = str(value.dtype).rsplit(".", 1)[-1]
            raw = value.view(mx.uint16) if value.dtype == mx.bfloat16 else value  # NumPy has no bfloat16
            arrays.append(np.array(raw, copy=True))
            leaves.append(["array", key, dtype, list(value.shape), arrays[-1].nbytes])
        elif value is None or isinstance(value, (bool, int, float, str)):
            leaves.append(["value", key, value])
        else:
            raise ValueError(f"a cache layer holds a {type(value).__name__}, which cannot be saved")
    has_meta = hasattr(type(layers[0]), "meta_state") if layers else False
    header = {"leaves": leaves, "classes": [type(layer).__name__ for layer in layers],
              "meta": [layer.meta_state for layer in layers] if has_meta else None}

    def pack() -> bytes:
        encoded = json.dumps(header).encode()
        return b"".join([_LENGTH.pack(len(encoded)), encoded, *(np.ascontiguousarray(a).tobytes() for a in arrays)])

    return pack


def restore(payload: bytes) -> list[Any]:
    """The prompt cache packed by :func:`snapshot`; ValueError when the bytes do not describe one."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.models import cache as cache_module

    try:
        (length,) = _LENGTH.unpack_from(payload)
        header = json.loads(payload[_LENGTH.size:_LENGTH.size + length])
        offset = _LENGTH.size + length
        flat: list[tuple[str, Any]] = []
        for leaf in header["leaves"]:
            if leaf[0] == "value":
                flat.append((leaf[1], leaf[2]))
                continue
            _, key, dtype, shape, nbytes = leaf
            target = getattr(mx, dtype)
            stored = np.dtype(np.uint16) if target == mx.bfloat16 else np.dtype(dtype)
            if offset + nbytes > len(payload):
                raise ValueError("payload shorter than its header says")
            data = np.frombuffer(payload, dtype=stored, count=nbytes // stored.itemsize, offset=offset)
            array = mx.array(data.reshape(shape))
            flat.append((key, array.view(mx.bfloat16) if target == mx.bfloat16 else array))
            offset += nbytes
        if offset != len(payload):
            raise ValueError("payload size does not match its header")
        states = tree_unflatten(flat)
        classes, metas = header["classes"], header["meta"]
        if len(states) != len(classes):
            raise ValueError("layer count does not match its header")
        layers = [getattr(cache_module, name).from_state(state) if metas is None else
                  getattr(cache_module, name).from_state(state, metas[index])
                  for index, (name, state) in enumerate(zip(classes, states, strict=True))]
    except (KeyError, TypeError, AttributeError, IndexError, struct.error, json.JSONDecodeError) as exc:
        raise ValueError(f"not an MLX prompt cache ({type(exc).__name__}: {exc})") from None
    mx.eval([layer.state for layer in layers])
    return layers
