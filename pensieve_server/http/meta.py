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
    loaded = state.provider.status()
    model = loaded[-1] if loaded else None
    return jsonify(
        {
            "status": "ok",
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - state.started_at, 3),
            "model": model.name if model else state.settings.default_model,
            "engine": model.engine if model else None,
            "device": model.device if model else None,
            # n_gpu_layers asked for and how many llama.cpp put on the GPU (llama.cpp only).
            "gpu_layers": model.gpu_layers if model else None,
            "gpu": gpu_json(),
            "context_length": model.context_length if model else None,
            "models_loaded": [m.name for m in loaded],
            "queue_depth": sum(m.queue_depth for m in loaded),
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
    data = [_model_object(name) for name in state.provider.names()]
    return jsonify(
        {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
         "last_id": data[-1]["id"] if data else None}
    )


@meta.route("/v1/models/<path:model_id>", methods=["GET"])
def get_model(model_id: str):
    provider = current_app.extensions["pensieve"].provider
    if model_id not in provider.names() and provider.resolve(model_id) not in provider.names():
        raise NotFound(f"model: {model_id}")
    return jsonify(_model_object(model_id))


@meta.route("/metrics", methods=["GET"])
def metrics():
    from pensieve_server.memory import resident_bytes

    state = current_app.extensions["pensieve"]
    loaded = state.provider.status()
    gauges = {
        "pensieve_queue_depth": sum(m.queue_depth for m in loaded),
        "pensieve_models_loaded": len(loaded),
        "pensieve_prefix_cache_bytes": sum(m.cache_bytes for m in loaded),
        "pensieve_resident_memory_bytes": resident_bytes(),
        "pensieve_uptime_seconds": round(time.time() - state.started_at, 3),
    }
    from pensieve_server.engine.disk_states import disk_gauges

    stores = [m.disk for m in loaded if m.disk is not None]
    gauges.update(disk_gauges(stores, state.settings.paths.prefix_states_dir))
    return Response(state.metrics.render(gauges), mimetype="text/plain; version=0.0.4")


@functools.lru_cache(maxsize=1)
def _openapi_document() -> bytes:
    """The committed OpenAPI description, read once: it ships with the package and never changes at runtime."""
    return (resources.files("pensieve_server") / "openapi.json").read_bytes()


@meta.route("/openapi.json", methods=["GET"])
def openapi() -> Response:
    return Response(_openapi_document(), mimetype="application/json")
