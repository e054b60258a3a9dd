"""Doctor's checks of the local model: installed (with every model the tier map names), and it loads."""

from __future__ import annotations

import time

from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.report import FAIL, OK, SKIP, Check
from pensieve_cli.doctor.system import available_ram_bytes, ram_needed
from pensieve_server.units import format_size

REINSTALL = "re-install it (`pensieve models rm` then `pull`), or try --engine"

def model_fix(name: str) -> str:
    from pensieve_server.models import catalog

    if catalog.get(name) is not None:
        return f"pensieve models pull {name}"
    return "choose an installed model: pensieve setup --model NAME (see `pensieve models list`)"


def check_model(ctx: Context) -> Check:
    name = ctx.settings.default_model
    entry = ctx.entry
    if entry is None:
        return Check("model", FAIL, f"{name} is not installed", model_fix(name))
    missing_tiers = []
    if len({*ctx.settings.tiers.values()} - {"", name}):
        from pensieve_server.models.store import ModelError, ModelStore

        store = ModelStore(ctx.settings.paths.models_dir)
        for tier, model in sorted(ctx.settings.tiers.items()):
            if model and model != name:
                try:
                    store.get(model)
                except ModelError:
                    missing_tiers.append(f"{tier} → {model}")
    if missing_tiers:
        return Check("model", FAIL, f"{name} is installed, but the tier map names missing models: "
                     f"{', '.join(missing_tiers)}", "pensieve setup --model NAME, or `pensieve models pull` them")
    where = "embedded" if entry.builtin else entry.path
    return Check("model", OK, f"{name} ({entry.format}, {format_size(entry.size_bytes, precise=False)}, {where})",
                 data={"size_bytes": entry.size_bytes, "context_length": entry.context_length})


def check_model_loads(ctx: Context) -> Check:
    entry = ctx.entry
    if entry is None:
        return Check("model loads", SKIP, "skipped: the model is not installed")
    if ctx.served():
        return Check("model loads", OK, f"loaded by the running server (pid {(ctx.health or {}).get('pid')})")
    if not ctx.load_model:
        return Check("model loads", SKIP, "skipped (--no-load)")
    available = available_ram_bytes()
    needed = ram_needed(entry.size_bytes)
    if available and available < needed:
        return Check("model loads", FAIL, f"not tried: {format_size(needed, precise=False)} needed, {format_size(available, precise=False)} "
                     "of memory available", "close other programs or choose a smaller model (`pensieve setup`)")
    from pensieve_server.engine.factory import load_backend
    from pensieve_server.models.store import ModelStore

    engine, problem = ctx.engine_choice
    if not engine:
        return Check("model loads", FAIL, f"{entry.name} does not load on {ctx.settings.engine}: {problem}", REINSTALL)
    started = time.perf_counter()
    try:
        backend = load_backend(entry, engine, ModelStore(ctx.settings.paths.models_dir), ctx.settings.context_length,
                               prefix_cache_bytes=0)
    except Exception as exc:  # noqa: BLE001 - any load failure is the finding
        return Check("model loads", FAIL, f"{entry.name} does not load on {engine}: {exc}", REINSTALL)
    seconds = time.perf_counter() - started
    device = getattr(backend, "device", "?")
    backend.close()
    return Check("model loads", OK, f"{entry.name} loads on {engine} ({device}) in {seconds:.1f} s",
                 data={"load_s": round(seconds, 2), "device": device})
