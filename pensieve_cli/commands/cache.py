"""``pensieve cache``: the prefix (KV) states kept on disk so a restart does not prefill long prompts again."""

from __future__ import annotations

import argparse
import time

from pensieve_cli import ui
from pensieve_cli.context import settings_from_args
from pensieve_cli.errors import CliError, ExitStatus
from pensieve_server.engine.disk_states import clear_folder, folder_usage, list_folder, resolve_disk_bytes
from pensieve_server.units import format_size


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = subparsers.add_parser(
        "cache",
        help="show or empty the prefix states saved on disk",
        description="Pensieve saves the computed state (KV cache) of long prompts, such as Claude Code's\n"
        "system prompt and tools, under its cache folder, so that a restarted server answers the next\n"
        "session at once instead of processing those tokens again. `disk_cache_bytes` bounds it.",
        epilog="examples:\n  pensieve cache info\n  pensieve cache list --json\n  pensieve cache clear",
        formatter_class=fmt,
    )
    actions = parser.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="where the states are, how much disk they use and the limit",
                              formatter_class=fmt, epilog="examples:\n  pensieve cache info\n  pensieve cache info --json")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=run_info)
    list_ = actions.add_parser("list", help="every saved state, most recently used first", formatter_class=fmt,
                               epilog="examples:\n  pensieve cache list\n  pensieve cache list --json")
    list_.add_argument("--json", action="store_true", help="machine-readable output")
    list_.set_defaults(func=run_list)
    clear = actions.add_parser("clear", help="delete every saved state (the next long prompt is computed again)",
                               formatter_class=fmt, epilog="examples:\n  pensieve cache clear")
    clear.add_argument("--json", action="store_true", help="machine-readable output")
    clear.set_defaults(func=run_clear)


def run_info(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    folder = settings.paths.prefix_states_dir
    used, files = folder_usage(folder)
    limit = resolve_disk_bytes(settings.disk_cache_bytes, folder)
    if args.json:
        ui.print_json({"folder": str(folder), "bytes": used, "files": files, "limit_bytes": limit,
                       "enabled": limit > 0})
        return ExitStatus.OK
    state = f"limit {format_size(limit, precise=False)}" if limit > 0 else "off (disk_cache_bytes = 0)"
    print(f"{folder}: {format_size(used, precise=False)} in {files} prefix states; {state}")
    return ExitStatus.OK


def run_list(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    rows = list_folder(settings.paths.prefix_states_dir)
    if args.json:
        ui.print_json(rows)
        return ExitStatus.OK
    if not rows:
        if not args.quiet:
            print(f"no prefix states in {settings.paths.prefix_states_dir}")
        return ExitStatus.OK
    print(f"{'tokens':>7}  {'size':>9}  {'last used':<16}  {'engine':<9}  model")
    for row in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["used_at"]))
        print(f"{row['tokens']:>7}  {format_size(row['bytes'], precise=False):>9}  {used:<16}  {row['engine']:<9}  {row['model']}")
    return ExitStatus.OK


def run_clear(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    folder = settings.paths.prefix_states_dir
    try:
        removed, freed = clear_folder(folder)
    except OSError as exc:
        raise CliError(f"cannot clear {folder}: {exc.strerror or exc}") from None
    if args.json:
        ui.print_json({"folder": str(folder), "removed": removed, "freed_bytes": freed})
    elif not args.quiet:
        ui.success(f"removed {removed} prefix states ({format_size(freed, precise=False)}) from {folder}")
    return ExitStatus.OK
