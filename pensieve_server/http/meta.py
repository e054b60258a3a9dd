"""Liveness and discovery: ``HEAD /`` (Claude Code probes it), ``/health``, ``/v1/models``, ``/openapi.json``."""

from __future__ import annotations

import functools
import os
import time
from importlib import resources

from flask import Blueprint, Response, current_app, jsonify

from pensieve_server import __version__
from pensieve_server.anthropic.errors import NotFound

meta = Blueprint("meta", __name__)

# A fixed, honest creation date for local models in Anthropic's list format.
_CREATED_AT = "2025-01-01T00:00:00Z"


@meta.route("/", methods=["GET", "HEAD"])
def root():
    return jsonify({"name": "pensieve", "version": __version__, "api": "anthropic-messages"})


@meta.route("/health", methods=["GET"])
def health():
    state = current_app.extensions["pensieve"]
    loaded = state.pool.loaded()
    model = loaded[-1] if loaded else None
    return jsonify(
        {
            "status": "ok",
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - state.started_at, 3),
            "model": model.entry.name if model else state.settings.default_model,
            "engine": model.engine if model else None,
            "device": model.backend.device if model else None,
            # n_gpu_layers asked for and how many llama.cpp put on the GPU (llama.cpp only).
            "gpu_layers": getattr(model.backend, "gpu_layers", None) if model else None,
            "gpu": gpu_json(),
            "context_length": model.info.context_length if model else None,
            "models_loaded": [m.entry.name for m in loaded],
            "queue_depth": sum(m.scheduler.depth for m in loaded),
        }
    )


def gpu_json() -> dict | None:
    """The GPU this machine has (vendor, name, memory), whether or not the engine uses it."""
    from pensieve_server.engine.devices import detect_gpu

    gpu = detect_gpu()
    return gpu.to_json() if gpu is not None else None


def _model_object(name: str) -> dict:
    return {"type": "model", "id": name, "display_name": name, "created_at": _CREATED_AT}


@meta.route("/v1/models", methods=["GET"])
def list_models():
    state = current_app.extensions["pensieve"]
    data = [_model_object(name) for name in state.pool.names()]
    return jsonify(
        {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
         "last_id": data[-1]["id"] if data else None}
    )


@meta.route("/v1/models/<path:model_id>", methods=["GET"])
def get_model(model_id: str):
    state = current_app.extensions["pensieve"]
    names = state.pool.names()
    if model_id in names:
        return jsonify(_model_object(model_id))
    from pensieve_server.anthropic.model_names import resolve_model_name

    local = resolve_model_name(model_id, names, state.settings.tiers, state.settings.default_model)
    if local not in names:
        raise NotFound(f"model: {model_id}")
    return jsonify(_model_object(model_id))


@meta.route("/metrics", methods=["GET"])
def metrics():
    from pensieve_server.memory import resident_bytes

    state = current_app.extensions["pensieve"]
    loaded = state.pool.loaded()
    gauges = {
        "pensieve_queue_depth": sum(m.scheduler.depth for m in loaded),
        "pensieve_models_loaded": len(loaded),
        "pensieve_prefix_cache_bytes": sum(m.backend.cache_bytes() for m in loaded),
        "pensieve_resident_memory_bytes": resident_bytes(),
        "pensieve_uptime_seconds": round(time.time() - state.started_at, 3),
    }
    from pensieve_server.engine.disk_states import disk_gauges

    stores = [m.backend.disk for m in loaded if getattr(m.backend, "disk", None) is not None]
    gauges.update(disk_gauges(stores, state.settings.paths.prefix_states_dir))
    return Response(state.metrics.render(gauges), mimetype="text/plain; version=0.0.4")


@functools.lru_cache(maxsize=1)
def _openapi_document() -> bytes:
    """The committed OpenAPI description, read once: it ships with the package and never changes at runtime."""
    return (resources.files("pensieve_server") / "openapi.json").read_bytes()


@meta.route("/openapi.json", methods=["GET"])
def openapi() -> Response:
    return Response(_openapi_document(), mimetype="application/json")
