"""``pensieve setup``: point Claude Code at the local server, show the change as a diff, undo it later.

Writes ``~/.claude.json`` (onboarding done), ``~/.claude/settings.json`` (``env``) and Pensieve's
config.toml (port, model tiers) through :mod:`pensieve_cli.claude_config`, which backs every file up
and journals the run for ``--undo``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pensieve_cli import ui
from pensieve_cli.claude_config import (
    Change,
    ClaudePaths,
    ConfigWriter,
    Edit,
    display,
    json_transform,
    toml_transform,
    with_env,
    with_onboarding,
    write_error,
)
from pensieve_cli.claude_env import env_for_settings
from pensieve_cli.context import settings_from_args
from pensieve_cli.errors import CliError, ExitStatus
from pensieve_cli.upstream_setup import UpstreamChoice, add_flags, choose_upstream, wants_upstream
from pensieve_server.auth_token import generate_token, read_token, write_private
from pensieve_server.models import catalog
from pensieve_server.settings import TIERS, Settings
from pensieve_server.units import format_size

HEALTH_TIMEOUT_S = 2.0
CONFLICTING_ENV = ("ANTHROPIC_API_KEY",)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "setup",
        help="configure Claude Code to use the local server",
        description="Point Claude Code at Pensieve: writes ~/.claude.json, ~/.claude/settings.json\n"
        "(or $CLAUDE_CONFIG_DIR) and Pensieve's config.toml after showing the change as a diff.\n"
        "Every file is backed up first; --undo puts them back exactly.",
        epilog="examples:\n  pensieve setup\n  pensieve setup --yes --model qwen2.5-coder-7b --port 8080\n"
        "  pensieve setup --dry-run\n  pensieve setup --undo\n"
        "  pensieve setup --yes --upstream http://localhost:11434/v1 --upstream-model qwen2.5-coder:7b",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-y", "--yes", action="store_true",
                        help="ask nothing: use --model/--port, else the current settings (default smollm2-135m, 7777)")
    parser.add_argument("--dry-run", action="store_true", help="show the changes as a diff and change nothing")
    parser.add_argument("--model", metavar="ALIAS",
                        help=f"local model: {', '.join(catalog.CATALOG_BY_ALIAS)} or an installed one")
    parser.add_argument("--port", type=int, help="port the server listens on")
    parser.add_argument("--start", action="store_true", help="start the server in the background if it is not running")
    parser.add_argument("--undo", action="store_true", help="restore the files as they were before the last setup")
    add_flags(parser)
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Choices:
    model: str
    port: int
    upstream: UpstreamChoice | None = None  # forward to another server instead of a local model


# -- choosing ----------------------------------------------------------------------------------------

def installed_models(settings: Settings) -> set[str]:
    from pensieve_server.models.store import ModelStore

    return {entry.name for entry in ModelStore(settings.paths.models_dir).list()}


def model_choices(ram: int, installed: set[str]) -> list[tuple[str, str]]:
    """``(alias, title)`` for the prompt: size, whether it is here, and what this machine can run."""
    best = catalog.recommend(ram)
    width = max(len(e.alias) for e in catalog.CATALOG)
    rows = []
    for entry in catalog.CATALOG:
        notes = ["installed" if entry.alias in installed else "download"]
        if entry is best:
            notes.append(f"recommended for {ram / catalog.GIB:.0f} GB RAM" if ram else "recommended")
        elif not catalog.fits(entry, ram):
            notes.append(f"needs {entry.min_ram_gb} GB RAM")
        title = (f"{entry.alias:<{width}}  {entry.params:>15}  {format_size(entry.size_bytes, precise=False):>8}  "
                 f"{', '.join(notes)}")
        rows.append((entry.alias, title))
    for name in sorted(installed - set(catalog.CATALOG_BY_ALIAS)):
        rows.append((name, f"{name:<{width}}  {'':>15}  {'':>8}  installed"))
    return rows


def check_model(model: str, installed: set[str]) -> str:
    if model in installed or model in catalog.CATALOG_BY_ALIAS:
        return model
    known = ", ".join(sorted(set(catalog.CATALOG_BY_ALIAS) | installed))
    raise CliError(f"unknown model {model!r}: choose one of {known} (see `pensieve models list`)", ExitStatus.USAGE)


def port_problem(text: str) -> str | None:
    try:
        port = int(text)
    except ValueError:
        return f"the port must be a number, got {text!r}"
    if not 1 <= port <= 65535:
        return f"the port must be between 1 and 65535, got {port}"
    return None


def choose(args: argparse.Namespace, settings: Settings, installed: set[str], ask: bool) -> Choices:
    if wants_upstream(args, settings):
        if args.port is not None and port_problem(str(args.port)):
            raise CliError(f"--port: {port_problem(str(args.port))}", ExitStatus.USAGE)
        upstream = choose_upstream(args, settings)
        return Choices(upstream.served_name, args.port or settings.port, upstream)
    model, port = args.model or settings.default_model, args.port or settings.port
    if args.port is not None and port_problem(str(args.port)):
        raise CliError(f"--port: {port_problem(str(args.port))}", ExitStatus.USAGE)
    if args.model is not None:
        check_model(args.model, installed)
    if ask and args.model is None:
        choices = model_choices(catalog.total_ram_bytes(), installed)
        default = model if model in {value for value, _ in choices} else catalog.recommend(0).alias
        notes = {e.alias: f"{e.description}; context {e.context_length} tokens" for e in catalog.CATALOG}
        model = ui.ask_select("Which model should answer Claude Code?", choices, default=default, descriptions=notes)
    if ask and args.port is None:
        port = int(ui.ask_text("Port for the Pensieve server:", default=str(port),
                               validate=lambda text: port_problem(text) or True))
    return Choices(check_model(model, installed), port)


# -- planning ----------------------------------------------------------------------------------------

def edits_for(settings: Settings, choices: Choices, token: str) -> list[Edit]:
    claude = ClaudePaths.resolve()
    chosen = settings.replace(port=choices.port, default_model=choices.model)
    if choices.upstream is not None:
        chosen = chosen.replace(engine="upstream", upstream_context_length=choices.upstream.context_length or 0)
    elif settings.engine == "upstream":
        chosen = chosen.replace(engine="auto")
    env = env_for_settings(chosen, token)  # with the chosen model's context (compaction, for long sessions)
    config = {"port": choices.port, "default_model": choices.model, **{f"tiers.{t}": choices.model for t in TIERS}}
    if choices.upstream is not None:
        config.update(choices.upstream.config())
    elif settings.engine == "upstream":
        config["engine"] = "auto"  # back from forwarding to a local model
    return [
        Edit(claude.claude_json, json_transform(claude.claude_json, with_onboarding)),
        Edit(claude.settings_json, json_transform(claude.settings_json, lambda d: with_env(d, env, claude.settings_json))),
        Edit(settings.paths.config_file, toml_transform(settings.paths.config_file, config), mode=0o600),
    ]


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace").lstrip("\ufeff")


def show_diff(changes: list[Change], token: str, *secrets: str) -> None:
    redact = [secret for secret in (token, *secrets) if secret]
    for change in changes:
        if change.changed:
            ui.print_diff(display(change.path), _text(change.before), _text(change.after), redact=redact)


def warn_conflicts(changes: list[Change], settings_json: Path) -> None:
    """Keys in settings.json that would make Claude Code ignore Pensieve's token."""
    for change in changes:
        if change.path == settings_json and change.after:
            data: dict[str, Any] = json.loads(_text(change.after) or "{}")
            for key in CONFLICTING_ENV:
                if key in data.get("env", {}):
                    ui.warning(f"{display(settings_json)} also sets env.{key}; remove it if Claude Code "
                               "asks for a key or gets 401 errors")
            if "apiKeyHelper" in data:
                ui.warning(f"{display(settings_json)} sets apiKeyHelper; Claude Code may send its key instead of "
                           "Pensieve's token")


# -- the server --------------------------------------------------------------------------------------

def server_health(base_url: str) -> dict[str, Any] | None:
    import httpx

    try:
        response = httpx.get(f"{base_url}/health", timeout=HEALTH_TIMEOUT_S)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def daemon_module() -> ModuleType:
    """`pensieve start`'s module, imported only when setup starts the server (tests replace it)."""
    return importlib.import_module("pensieve_cli.commands.daemon")


def start_command() -> str:
    return "pensieve start"


def report_server(settings: Settings, model_ready: bool, start: bool, quiet: bool) -> str:
    """Check (and with --start, start) the server; return the next command for the person."""
    health = server_health(settings.base_url)
    if health is None and start and model_ready:
        daemon_module().start_background(settings)
        health = server_health(settings.base_url)
        if health is None:
            ui.warning(f"the server was started but does not answer at {settings.base_url} yet")
            return "pensieve status"
    if health is None:
        if not quiet:
            ui.warning(f"the server is not running at {settings.base_url}")
        return start_command() if model_ready else ""
    served = health.get("model")
    if not quiet:
        ui.success(f"server running at {settings.base_url} (model {served})")
    if served and served != settings.default_model:
        ui.warning(f"the server still serves {served}; restart it to use {settings.default_model}")
        return "pensieve restart"
    return ""


# -- the command -------------------------------------------------------------------------------------

def run_undo(args: argparse.Namespace) -> int:
    if args.dry_run or args.model or args.port or args.start or args.upstream:
        raise CliError("--undo cannot be combined with --dry-run, --model, --port, --start or --upstream",
                       ExitStatus.USAGE)
    settings = settings_from_args(args)
    restored = ConfigWriter(settings.paths.backups_dir).undo()
    for item in restored:
        if not args.quiet:
            ui.success(f"{item.action} {display(item.path)}")
        if item.saved_copy is not None:
            ui.warning(f"{display(item.path)} had changed since setup; that version is kept at "
                       f"{display(item.saved_copy)}")
    if not args.quiet:
        print("The files are back as they were before the last `pensieve setup`.")
    return ExitStatus.OK


def run(args: argparse.Namespace) -> int:
    if args.undo:
        return run_undo(args)
    ask = not args.yes and ui.interactive()
    if not args.yes and not args.dry_run and not ask:
        raise CliError("setup asks questions, but this is not a terminal: run `pensieve setup --yes` "
                       "(with --model ALIAS / --port N if needed), or `pensieve setup --dry-run` to preview",
                       ExitStatus.USAGE)
    settings = settings_from_args(args)
    installed = installed_models(settings)
    choices = choose(args, settings, installed, ask)
    token = settings.auth_token or read_token(settings.paths.token_file)
    new_token = not token
    token = token or generate_token()  # written only once the person agrees to the change

    writer = ConfigWriter(settings.paths.backups_dir)
    changes = writer.plan(edits_for(settings, choices, token))
    target = settings.replace(port=choices.port, default_model=choices.model)
    secrets = (choices.upstream.api_key, settings.upstream_api_key) if choices.upstream else ()
    if not any(c.changed for c in changes):
        if not args.quiet:
            ui.success(f"nothing to change: Claude Code already uses Pensieve at {target.base_url} "
                       f"with {choices.model}")
    elif args.dry_run:
        show_diff(changes, token, *secrets)
        print("Dry run: nothing was changed.")
    else:
        if ask or not args.quiet:
            show_diff(changes, token, *secrets)
        warn_conflicts(changes, ClaudePaths.resolve().settings_json)
        if ask and not ui.ask_confirm("Apply these changes?", default=True):
            print("Nothing was changed.")
            return ExitStatus.OK
        apply_changes(args, writer, settings, choices, token if new_token else None)
    if args.dry_run:
        return ExitStatus.OK
    return finish(args, target, choices, installed)


def apply_changes(args: argparse.Namespace, writer: ConfigWriter, settings: Settings, choices: Choices,
                  new_token: str | None) -> None:
    """Store the token and write the files; the writer merges again on whatever is there now."""
    token_file = settings.paths.token_file
    if new_token is not None and not read_token(token_file):
        try:
            write_private(token_file, new_token + "\n")
        except OSError as exc:
            raise CliError(f"{write_error(token_file, exc)} — nothing was changed") from None
    token = settings.auth_token or read_token(token_file)  # another process may have made one meanwhile
    made = writer.apply(edits_for(settings, choices, token))
    if not args.quiet:
        for change in made:
            ui.success(f"{'updated' if change.before is not None else 'created'} {display(change.path)}")
        print("Backups are kept; `pensieve setup --undo` puts the files back as they were.")


def finish(args: argparse.Namespace, settings: Settings, choices: Choices, installed: set[str]) -> int:
    model_ready = choices.model in installed or choices.upstream is not None
    steps = []
    if not model_ready:
        entry = catalog.get(choices.model)
        size = f" (about {format_size(entry.size_bytes, precise=False)})" if entry else ""
        ui.warning(f"{choices.model} is not downloaded yet{size}")
        steps.append(f"pensieve models pull {choices.model}")
    start_step = report_server(settings, model_ready, args.start, args.quiet)
    if not model_ready:
        steps.append(start_command())
    elif start_step:
        steps.append(start_step)
    steps.append("claude")
    if not args.quiet:
        print("Next:\n" + "".join(f"  {step}\n" for step in steps), end="")
    return ExitStatus.OK
