"""README stays true to the code: every setting in its configuration table, every command mentioned."""

from __future__ import annotations

import re
from pathlib import Path

from pensieve_cli.main import build_parser
from pensieve_server.settings import OPTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
TABLE_ROW = re.compile(r"^\| `([a-z_.]+)` \| `(PENSIEVE_[A-Z_]+)` \| (.+?) \| ", re.MULTILINE)


def test_configuration_table_matches_the_settings() -> None:
    rows = {name: (env, default) for name, env, default in TABLE_ROW.findall(README)}
    assert list(rows) == [o.name for o in OPTIONS], "regenerate README's configuration table"
    for option in OPTIONS:
        env, default = rows[option.name]
        assert env == option.env_var
        assert default == (f"`{option.default}`" if option.default != "" else "(empty)"), option.name


def test_every_command_appears_in_the_readme() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [name for name in commands if not re.search(rf"pensieve {re.escape(name)}\b", README)]
    assert not missing, f"README never shows: {missing}"


def test_exactly_two_setup_commands() -> None:
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", setup, re.DOTALL)
    assert commands == ['pip install . && pensieve serve', 'pip install -e ".[test]" && python -m pytest']
