"""``pensieve doctor``: every check in order, one line each with its fix, then a summary.

Lines are printed as each check finishes (loading a model or the self-test can take a while);
``--json`` prints the same report once at the end. Exit 0 only when nothing failed.
"""

from __future__ import annotations

import argparse
from typing import Any

from pensieve_cli import ui
from pensieve_cli.context import settings_from_args
from pensieve_cli.doctor.checklist import run_checks
from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.report import FAIL, OK, SKIP, WARN, Check, render, summary
from pensieve_cli.errors import ExitStatus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the setup end to end and say how to fix what is wrong",
        description="Check Python, the engine, the model, the server, Claude Code's config and a real\n"
        "request end to end. Each line is ✓ ok, ! a warning or ✗ a failure with its fix.",
        epilog="examples:\n  pensieve doctor\n  pensieve doctor --claude      # also run `claude --print`\n"
        "  pensieve doctor --json\n\nexit status: 0 nothing failed, 4 a check failed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--claude", action="store_true",
                        help='also run the real `claude --print "Say hello in 5 words"` against the server')
    parser.add_argument("--no-load", dest="load", action="store_false",
                        help="do not load the model when the server is not serving it (faster)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    ctx = Context.create(settings, load_model=args.load)
    checks: list[Check] = []
    for check in run_checks(ctx, with_claude=args.claude):
        checks.append(check)
        if not args.json and not (args.quiet and check.status in (OK, SKIP)):
            render(check)
    counts = summary(checks)
    failed = counts[FAIL] > 0
    if args.json:
        report: dict[str, Any] = {"ok": not failed, "summary": counts, "checks": [c.to_json() for c in checks]}
        ui.print_json(report)
    elif not args.quiet or failed:
        print()
        print(f"{len(checks)} checks: {counts[OK]} ok, {counts[WARN]} warnings, {counts[FAIL]} failed"
              + (f", {counts[SKIP]} skipped" if counts[SKIP] else ""))
        sym = ui.symbols()
        print(f"Fix the {sym.fail} lines above, then run `pensieve doctor` again." if failed
              else "Pensieve is ready: run `claude`.")
    return ExitStatus.CHECK_FAILED if failed else ExitStatus.OK
