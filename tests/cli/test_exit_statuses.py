"""main's one table from an error a command lets through to its exit status and one plain line."""

from __future__ import annotations

import argparse

import pytest

from pensieve_cli import main as cli_main
from pensieve_cli.claude_config import ConfigFileError, NothingToUndo
from pensieve_cli.errors import CliError, ExitStatus
from pensieve_server.engine.base import ModelLoadError
from pensieve_server.models.hub import HubNotFound
from pensieve_server.models.store import ModelError, ModelNotFound
from pensieve_server.runner import PortInUse
from pensieve_server.settings import ConfigError

CASES = [
    (CliError("said so", ExitStatus.USAGE), ExitStatus.USAGE),
    (NothingToUndo("nothing to undo"), ExitStatus.NOT_FOUND),
    (ConfigFileError("settings.json is not valid JSON"), ExitStatus.ERROR),
    (ConfigError("port: not a number"), ExitStatus.USAGE),
    (PortInUse("port 7777 is in use"), ExitStatus.ERROR),
    (ModelLoadError("cannot load"), ExitStatus.NOT_FOUND),
    (ModelNotFound("model 'x' is not installed"), ExitStatus.NOT_FOUND),
    (HubNotFound("no repo acme/nope"), ExitStatus.NOT_FOUND),
    (ModelError("a model named 'x' already exists"), ExitStatus.ERROR),
]


def run_raising(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> int:
    """Run ``pensieve status`` with its command replaced by one that raises ``error``."""
    parser = cli_main.build_parser()

    def fail(args: argparse.Namespace) -> int:
        raise error

    parser.set_defaults(func=fail)
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    monkeypatch.delenv("PENSIEVE_TRACEBACK", raising=False)
    return cli_main.main([])


@pytest.mark.parametrize(("error", "status"), CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_each_error_is_one_line_with_its_status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                 error: Exception, status: ExitStatus) -> None:
    assert cli_main.exit_status(error) == status
    assert run_raising(monkeypatch, error) == status
    out, err = capsys.readouterr()
    assert out == "" and err == f"pensieve: {error}\n"


def test_an_error_no_command_expects_says_so_without_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.exit_status(KeyError("x")) is None
    assert run_raising(monkeypatch, KeyError("x")) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert err.startswith("pensieve: unexpected error: KeyError") and "Traceback" not in err and err.count("\n") == 1


def test_bad_setting_through_the_real_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["config", "set", "port", "not-a-port"]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert err.startswith("pensieve: ") and err.count("\n") == 1 and "Traceback" not in err
