"""``pensieve config``: show and change Pensieve's own settings (config.toml)."""

from __future__ import annotations

import argparse
import json

from pensieve_cli.context import settings_from_args
from pensieve_cli.errors import ExitStatus
from pensieve_server.auth_token import fingerprint
from pensieve_server.settings import OPTIONS, OPTIONS_BY_NAME, SECRET_OPTIONS, Paths


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="show or change Pensieve's settings",
        description="Settings resolve as: defaults < config file < PENSIEVE_* environment < command flags.",
        epilog="examples:\n  pensieve config list\n  pensieve config set port 8080\n  pensieve config get tiers.haiku",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    actions.add_parser("path", help="print the config file's path", formatter_class=fmt,
                       epilog="examples:\n  pensieve config path\n  ${EDITOR:-vi} \"$(pensieve config path)\""
                       ).set_defaults(func=run_path)
    get = actions.add_parser("get", help="print one setting's value", formatter_class=fmt,
                             epilog="examples:\n  pensieve config get port\n  pensieve config get tiers.haiku")
    get.add_argument("key", choices=[o.name for o in OPTIONS], metavar="KEY")
    get.set_defaults(func=run_get)
    set_ = actions.add_parser("set", help="store a setting in the config file", formatter_class=fmt,
                              epilog="examples:\n  pensieve config set port 8080\n"
                              "  pensieve config set engine llamacpp\n  pensieve config set tiers.haiku smollm2-135m")
    set_.add_argument("key", choices=[o.name for o in OPTIONS], metavar="KEY")
    set_.add_argument("value")
    set_.set_defaults(func=run_set)
    unset = actions.add_parser("unset", help="remove a setting from the config file (back to default)",
                               formatter_class=fmt, epilog="examples:\n  pensieve config unset port")
    unset.add_argument("key", choices=[o.name for o in OPTIONS], metavar="KEY")
    unset.set_defaults(func=run_unset)
    list_ = actions.add_parser("list", help="every setting with its value and where it came from",
                               formatter_class=fmt,
                               epilog="examples:\n  pensieve config list\n  pensieve config list --json")
    list_.add_argument("--json", action="store_true", help="machine-readable output")
    list_.set_defaults(func=run_list)


def _display(key: str, value: object) -> object:
    if key in SECRET_OPTIONS:
        return fingerprint(str(value)) if value else ""
    return value


def _current(args: argparse.Namespace) -> dict[str, tuple[object, str]]:
    settings = settings_from_args(args)
    values: dict[str, tuple[object, str]] = {}
    for option in OPTIONS:
        if option.name.startswith("tiers."):
            value = settings.tiers.get(option.name.split(".", 1)[1], "")
        elif option.name == "allowed_origins":
            value = ",".join(settings.allowed_origins)
        else:
            value = getattr(settings, option.name)
        values[option.name] = (value, settings.sources.get(option.name, "default"))
    return values


def run_path(args: argparse.Namespace) -> int:
    print(Paths.resolve().config_file)
    return ExitStatus.OK


def run_get(args: argparse.Namespace) -> int:
    value, _ = _current(args)[args.key]
    print(_display(args.key, value))
    return ExitStatus.OK


def run_set(args: argparse.Namespace) -> int:
    from pensieve_cli.config_file import set_values
    from pensieve_server.settings import coerce

    option = OPTIONS_BY_NAME[args.key]
    value = coerce(option, args.value, args.key)
    set_values(Paths.resolve(), {args.key: value})
    if not args.quiet:
        print(f"{args.key} = {_display(args.key, value)}")
    return ExitStatus.OK


def run_unset(args: argparse.Namespace) -> int:
    from pensieve_cli.config_file import set_values

    set_values(Paths.resolve(), {args.key: None})
    if not args.quiet:
        print(f"{args.key} reset to its default ({OPTIONS_BY_NAME[args.key].default!r})")
    return ExitStatus.OK


def run_list(args: argparse.Namespace) -> int:
    current = _current(args)
    if args.json:
        print(json.dumps({k: {"value": _display(k, v), "source": s} for k, (v, s) in current.items()}, indent=2))
        return ExitStatus.OK
    width = max(len(k) for k in current)
    for key, (value, source) in current.items():
        print(f"{key:<{width}}  {_display(key, value)!s:<24}  ({source})")
    return ExitStatus.OK
