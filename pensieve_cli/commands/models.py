"""``pensieve models``: the local models: list, inspect, import, pull, remove, pick the default and tiers.

Models live in the store (:mod:`pensieve_server.models.store`); which one answers is config
(``default_model``, ``tiers.*``), written through :mod:`pensieve_cli.config_file` so the rest of
config.toml is kept. ``--json`` output is stable for scripts; human output goes to stdout, warnings too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

from pensieve_cli import ui
from pensieve_cli.context import settings_from_args
from pensieve_cli.errors import CliError, ExitStatus
from pensieve_server.models import catalog
from pensieve_server.models.formats.engines import engines_for
from pensieve_server.models.store import ModelEntry, ModelNotFound, ModelStore
from pensieve_server.settings import TIERS, Settings
from pensieve_server.units import format_size

FMT = argparse.RawDescriptionHelpFormatter
RESET_WORDS = ("-", "none")  # `models map haiku -`: back to the default model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, import, pull and remove local models; choose the default",
        description="Manage the models Pensieve runs. Without an action: the same as `pensieve models list`.",
        epilog="examples:\n  pensieve models list\n  pensieve models pull qwen2.5-coder-7b\n"
        "  pensieve models import ~/Downloads/model-Q4_K_M.gguf --name mymodel\n"
        "  pensieve models default mymodel\n  pensieve models map haiku smollm2-135m\n  pensieve models rm mymodel",
        formatter_class=FMT,
    )
    parser.set_defaults(func=run_list, json=False)
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")

    list_ = actions.add_parser(
        "list", help="installed models; * marks the default", formatter_class=FMT,
        description="Installed models with their format, size on disk and context window; * marks the default.",
        epilog="examples:\n  pensieve models list\n  pensieve models list --json | jq '.[].name'")
    list_.add_argument("--json", action="store_true", help="machine-readable output")
    list_.set_defaults(func=run_list)

    info = actions.add_parser(
        "info", help="everything about one installed model", formatter_class=FMT,
        description="Format, architecture, context, size, where it is stored, where it came from and which\n"
        "engines can run it.",
        epilog="examples:\n  pensieve models info smollm2-135m\n  pensieve models info smollm2-135m --json")
    info.add_argument("name", metavar="NAME", help="an installed model (see `pensieve models list`)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=run_info)

    rm = actions.add_parser(
        "rm", help="delete an installed model from disk", formatter_class=FMT,
        description="Delete a model and the files derived from it (e.g. its MLX conversion). The embedded\n"
        "model cannot be removed; the default model (or one a tier uses) only with --force.",
        epilog="examples:\n  pensieve models rm mymodel\n  pensieve models rm mymodel --yes\n"
        "  pensieve models rm mymodel --yes --force   # even though it is the default")
    rm.add_argument("name", metavar="NAME", help="the model to delete")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    rm.add_argument("--force", action="store_true", help="remove it even if it is the default model or a tier's")
    rm.set_defaults(func=run_rm)

    default = actions.add_parser(
        "default", help="choose the model that answers by default", formatter_class=FMT,
        description="Store default_model in config.toml. Tiers mapped with `models map` keep their model.\n"
        "A running server keeps its model until restarted.",
        epilog="examples:\n  pensieve models default qwen2.5-coder-7b\n  pensieve restart")
    default.add_argument("name", metavar="NAME", help="an installed model")
    default.set_defaults(func=run_default)

    import_ = actions.add_parser(
        "import", help="add a GGUF file or an MLX folder that is already on disk", formatter_class=FMT,
        description="Check a .gguf file (header, architecture, that it is complete) or an MLX folder\n"
        "(config.json, *.safetensors, tokenizer) and copy it into the model store. A split GGUF is\n"
        "imported from its first part (-00001-of-0000N.gguf). Nothing is left behind if it fails.",
        epilog="examples:\n  pensieve models import ~/Downloads/qwen2.5-coder-7b-instruct-q4_k_m.gguf\n"
        "  pensieve models import ./Qwen3-4B-4bit --name qwen3-4b-local")
    import_.add_argument("path", metavar="PATH", help="a .gguf file or an MLX model folder")
    import_.add_argument("--name", help="name in the store (default: from the file name)")
    import_.set_defaults(func=run_import)

    map_ = actions.add_parser(
        "map", help="which local model answers each Claude tier (opus, sonnet, haiku)", formatter_class=FMT,
        description="Claude Code asks for claude-*opus*, claude-*sonnet* or claude-*haiku* models; each tier is\n"
        "answered by the model mapped here, or by the default model. Without arguments: show the mapping.",
        epilog="examples:\n  pensieve models map\n  pensieve models map haiku smollm2-135m\n"
        "  pensieve models map opus -        # back to the default model\n  pensieve models map --json")
    map_.add_argument("tier", nargs="?", choices=TIERS, metavar="TIER", help=f"one of {', '.join(TIERS)}")
    map_.add_argument("model", nargs="?", metavar="MODEL",
                      help="an installed model, or - to use the default model again")
    map_.add_argument("--json", action="store_true", help="machine-readable output")
    map_.set_defaults(func=run_map)

    pull = actions.add_parser(
        "pull", help="download a model from the Hugging Face Hub", formatter_class=FMT,
        description="Download a catalogue model (see `pensieve setup`) or any Hugging Face repo with MLX or\n"
        "GGUF weights. An interrupted download resumes when the same command is run again.",
        epilog="examples:\n  pensieve models pull qwen2.5-coder-7b\n"
        "  pensieve models pull Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:q4_k_m --name coder7b\n"
        "  pensieve models pull mlx-community/Qwen3-4B-4bit --revision main --yes")
    pull.add_argument("spec", metavar="REPO_OR_ALIAS",
                      help=f"catalogue alias ({', '.join(e.alias for e in catalog.CATALOG if not e.embedded)}) "
                      "or owner/name[:QUANT]")
    pull.add_argument("--revision", help="branch, tag or commit (default: main)")
    pull.add_argument("--name", help="name in the store (default: the alias or the file name)")
    pull.add_argument("-y", "--yes", action="store_true", help="do not ask before downloading")
    pull.set_defaults(func=run_pull)


# -- helpers ---------------------------------------------------------------------------------------

def _store(settings: Settings) -> ModelStore:
    return ModelStore(settings.paths.models_dir)


def _local_default(settings: Settings) -> str:
    """The configured default model, or "" while forwarding to an upstream (no local default then)."""
    return "" if settings.engine == "upstream" else settings.default_model


def _tiers_of(settings: Settings, name: str) -> list[str]:
    """The tiers this model answers (explicitly mapped, or through being the default)."""
    if settings.engine == "upstream":
        return []
    return [tier for tier in TIERS if settings.model_for_tier(tier) == name]


def _get(store: ModelStore, name: str) -> ModelEntry:
    """The installed model, or a NOT_FOUND error that says how to get it."""
    try:
        return store.get(name)
    except ModelNotFound:
        if catalog.get(name) is not None:
            raise CliError(f"{name} is not downloaded yet; run `pensieve models pull {name}`",
                           ExitStatus.NOT_FOUND) from None
        raise


def _write_config(settings: Settings, values: dict[str, object | None]) -> None:
    from pensieve_cli.config_file import set_values

    set_values(settings.paths, values)


def _describe(entry: ModelEntry, settings: Settings) -> dict[str, Any]:
    known = catalog.get(entry.name)
    return {
        **entry.to_json(),
        "default": entry.name == _local_default(settings),
        "tiers": _tiers_of(settings, entry.name),
        "engines": list(engines_for(entry)),
        "description": known.description if known else "",
    }


# -- list / info -----------------------------------------------------------------------------------

def run_list(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    entries = _store(settings).list()
    default = _local_default(settings)
    if args.json:
        ui.print_json([_describe(entry, settings) for entry in entries])
        return ExitStatus.OK
    rows = [("", "NAME", "FORMAT", "SIZE", "CONTEXT", "TIERS")]
    for entry in entries:
        tiers = ",".join(_tiers_of(settings, entry.name))
        rows.append(("*" if entry.name == default else "", entry.name, entry.format,
                     format_size(entry.size_bytes), str(entry.context_length), tiers))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = f"{row[0]:<1} {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>{widths[3]}}  " \
               f"{row[4]:>{widths[4]}}  {row[5]}"
        print(line.rstrip())
    names = {entry.name for entry in entries}
    missing = sorted({default, *(settings.tiers.get(t) or "" for t in TIERS)} - names - {""})
    for name in missing:
        hint = f"`pensieve models pull {name}`" if catalog.get(name) else "`pensieve models default NAME`"
        ui.warning(f"{name} is configured but not installed; run {hint}")
    if not args.quiet:
        print(f"\n* default model. Storage: {settings.paths.models_dir}")
    return ExitStatus.OK


def run_info(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    entry = _get(_store(settings), args.name)
    data = _describe(entry, settings)
    if args.json:
        ui.print_json(data)
        return ExitStatus.OK
    rows = [
        ("name", entry.name + ("  (default)" if data["default"] else "")),
        ("format", entry.format.upper()),
        ("architecture", entry.architecture or "unknown"),
        ("context", f"{entry.context_length} tokens"),
        ("size", format_size(entry.size_bytes)),
        ("path", entry.path),
        ("source", entry.source),
        ("engines", ", ".join(data["engines"])),
        ("tiers", ", ".join(data["tiers"]) or "none"),
    ]
    if entry.builtin:
        rows.append(("embedded", "yes: shipped with Pensieve, cannot be removed"))
    if data["description"]:
        rows.append(("about", data["description"]))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return ExitStatus.OK


# -- rm / default / map ----------------------------------------------------------------------------

def run_rm(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    store = _store(settings)
    entry = _get(store, args.name)
    if entry.builtin:
        raise CliError(f"{entry.name} is the embedded model shipped with Pensieve; it cannot be removed")
    uses = []
    if entry.name == _local_default(settings):
        uses.append("the default model")
    uses += [f"tiers.{t}" for t in TIERS if settings.tiers.get(t) == entry.name]
    if uses and not args.force:
        raise CliError(f"{entry.name} is {' and '.join(uses)}; choose another first (`pensieve models default "
                       "NAME` / `pensieve models map TIER NAME`) or pass --force")
    if not args.yes:
        if not ui.interactive():
            raise CliError(f"removing {entry.name} asks for confirmation, but this is not a terminal: "
                           f"run `pensieve models rm {entry.name} --yes`", ExitStatus.USAGE)
        if not ui.ask_confirm(f"Delete {entry.name} ({format_size(entry.size_bytes)}) from disk?", default=False):
            print("Nothing was removed.")
            return ExitStatus.OK
    try:
        store.remove(entry.name)
    except OSError as exc:
        raise CliError(f"cannot remove {store.folder(entry.name)}: {exc.strerror or exc}") from None
    derived = store.root / ".derived"
    if derived.is_dir():
        for folder in derived.glob(f"{entry.name}-*"):
            shutil.rmtree(folder, ignore_errors=True)  # e.g. its MLX conversion
    if not args.quiet:
        ui.success(f"removed {entry.name} ({format_size(entry.size_bytes)} freed)")
    if uses:
        ui.warning(f"{' and '.join(uses)} still name{'s' if len(uses) == 1 else ''} {entry.name}; "
                   "set another with `pensieve models default NAME` / `pensieve models map TIER NAME`")
    return ExitStatus.OK


def _env_overrides(settings: Settings, key: str) -> str | None:
    """The environment variable that wins over config.toml for ``key``, if it is set."""
    from pensieve_server.settings import OPTIONS_BY_NAME

    return OPTIONS_BY_NAME[key].env_var if settings.sources.get(key) == "env" else None


def run_default(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    entry = _get(_store(settings), args.name)
    _write_config(settings, {"default_model": entry.name})
    if not args.quiet:
        ui.success(f"default model: {entry.name}")
    env = _env_overrides(settings, "default_model")
    if env:
        ui.warning(f"{env} is set in the environment and wins over config.toml; unset it to use {entry.name}")
    if settings.engine == "upstream":
        ui.warning("engine is upstream: requests are forwarded; `pensieve config set engine auto` to run it locally")
    if not args.quiet:
        print("A running server keeps its model until restarted (pensieve restart).")
    return ExitStatus.OK


def run_map(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.tier is not None and args.model is not None:
        return _set_tier(args, settings)
    tiers = [args.tier] if args.tier else list(TIERS)
    rows = []
    for tier in tiers:
        mapped = settings.tiers.get(tier) or ""
        rows.append({"tier": tier, "model": settings.model_for_tier(tier), "mapped": bool(mapped),
                     "source": settings.sources.get(f"tiers.{tier}", "default") if mapped else "default_model"})
    if args.json:
        ui.print_json(rows)
        return ExitStatus.OK
    for row in rows:
        how = f"(tiers.{row['tier']}, {row['source']})" if row["mapped"] else "(the default model)"
        print(f"claude-*{row['tier']}*".ljust(16) + f" -> {row['model']}  {how}")
    return ExitStatus.OK


def _set_tier(args: argparse.Namespace, settings: Settings) -> int:
    key = f"tiers.{args.tier}"
    if args.model in RESET_WORDS:
        _write_config(settings, {key: None})
        if not args.quiet:
            ui.success(f"claude-*{args.tier}* -> the default model ({_local_default(settings) or 'upstream'})")
    else:
        entry = _get(_store(settings), args.model)
        _write_config(settings, {key: entry.name})
        if not args.quiet:
            ui.success(f"claude-*{args.tier}* -> {entry.name}")
    env = _env_overrides(settings, key)
    if env:
        ui.warning(f"{env} is set in the environment and wins over config.toml")
    return ExitStatus.OK


# -- import / pull ---------------------------------------------------------------------------------

class _CopyProgress:
    """A percentage redrawn in place on a terminal's stderr; silent elsewhere (logs want no \\r)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 if total <= 0 else done * 100 // total
        if self.enabled and percent != self.shown:
            self.shown = percent
            sys.stderr.write(f"\rCopying {percent:3d}% of {format_size(total)}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.shown >= 0:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def run_import(args: argparse.Namespace) -> int:
    from pensieve_server.models.importer import import_model

    settings = settings_from_args(args)
    progress = _CopyProgress(not args.quiet and ui.is_tty(sys.stderr))
    try:
        entry = import_model(_store(settings), args.path, args.name, progress)
    except OSError as exc:
        raise CliError(f"cannot import {args.path}: {exc.strerror or exc}") from None
    finally:
        progress.close()
    if args.quiet:
        print(entry.name)
        return ExitStatus.OK
    ui.success(f"imported {entry.name} ({entry.format.upper()}, {entry.architecture or 'unknown architecture'}, "
               f"{format_size(entry.size_bytes)}, {entry.context_length} tokens of context)")
    if entry.format == "mlx":
        print("MLX models run on Apple silicon (engine mlx) only.")
    print(f"Make it the default: pensieve models default {entry.name}")
    return ExitStatus.OK


def run_pull(args: argparse.Namespace) -> int:
    from pensieve_cli import model_pull  # imported when used: it brings in huggingface_hub

    return int(model_pull.run(args))
