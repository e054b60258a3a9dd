"""``pensieve config`` and :mod:`pensieve_cli.config_file`: round trips, types, precedence, safe writes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pensieve_cli.claude_config import ConfigFileError
from pensieve_cli.config_file import read_values, set_values
from pensieve_cli.main import main
from pensieve_server.settings import OPTIONS, ConfigError, Paths, load_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def config_path() -> Path:
    return Paths.resolve().config_file


def config_data() -> dict:
    return tomllib.loads(config_path().read_text(encoding="utf-8"))


# -- config_file ---------------------------------------------------------------------------------

def test_set_values_converts_types_and_nests_dotted_keys() -> None:
    written = set_values(Paths.resolve(), {"port": "8080", "temperature": 1, "tiers.haiku": "tiny"})
    assert written == {"port": 8080, "temperature": 1.0, "tiers.haiku": "tiny"}
    data = config_data()
    assert data == {"port": 8080, "temperature": 1.0, "tiers": {"haiku": "tiny"}}
    assert isinstance(data["port"], int) and isinstance(data["temperature"], float)
    assert stat.S_IMODE(config_path().stat().st_mode) == 0o600


def test_set_values_keeps_other_and_unknown_keys_and_removes_with_none() -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text('# mine\nport = 9000\nfuture_key = "kept"\n[tiers]\nopus = "big"\nhaiku = "tiny"\n'
                    '[extra]\nx = 1\n')
    set_values(Paths.resolve(), {"tiers.haiku": None, "host": "0.0.0.0"})
    data = config_data()
    assert data == {"port": 9000, "future_key": "kept", "host": "0.0.0.0", "tiers": {"opus": "big"},
                    "extra": {"x": 1}}
    set_values(Paths.resolve(), {"tiers.opus": None})
    assert "tiers" not in config_data()  # an emptied table goes too
    assert read_values(Paths.resolve())["extra.x"] == 1


def test_set_values_bad_value_or_key_writes_nothing() -> None:
    with pytest.raises(ConfigError, match="port must be int"):
        set_values(Paths.resolve(), {"port": "eighty"})
    with pytest.raises(ConfigError, match="engine must be one of"):
        set_values(Paths.resolve(), {"engine": "gpu"})
    with pytest.raises(ConfigError, match="unknown setting"):
        set_values(Paths.resolve(), {"nope": 1})
    assert not config_path().exists()


def test_unset_on_missing_file_creates_nothing() -> None:
    set_values(Paths.resolve(), {"port": None})
    assert not config_path().exists()


def test_unchanged_value_does_not_rewrite_the_file() -> None:
    set_values(Paths.resolve(), {"port": 8080})
    before = config_path().stat().st_mtime_ns, config_path().stat().st_ino
    set_values(Paths.resolve(), {"port": "8080"})
    assert (config_path().stat().st_mtime_ns, config_path().stat().st_ino) == before


def test_invalid_toml_is_one_clear_error_and_left_alone() -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("port = = 1\n")
    with pytest.raises(ConfigFileError, match="not valid TOML"):
        set_values(Paths.resolve(), {"port": 1})
    assert path.read_text() == "port = = 1\n"


def test_write_is_atomic_leaves_no_temp_files() -> None:
    for port in range(8000, 8005):
        set_values(Paths.resolve(), {"port": port})
    assert [p.name for p in config_path().parent.iterdir()] == ["config.toml"]


def test_read_only_mode_bits_refused_even_for_root() -> None:
    set_values(Paths.resolve(), {"port": 8080})
    config_path().chmod(0o400)
    try:
        with pytest.raises(ConfigFileError, match="read-only"):
            set_values(Paths.resolve(), {"port": 8081})
    finally:
        config_path().chmod(0o600)
    assert config_data()["port"] == 8080


# -- pensieve config -----------------------------------------------------------------------------

def test_path_prints_the_config_file(cli: Cli) -> None:
    rc, out, err = cli("config", "path")
    assert (rc, err) == (0, "")
    assert out.strip() == str(config_path())


def test_set_get_unset_round_trip(cli: Cli) -> None:
    assert cli("config", "get", "port")[:2] == (0, "7777\n")
    rc, out, _ = cli("config", "set", "port", "8080")
    assert (rc, out) == (0, "port = 8080\n")
    assert cli("config", "get", "port")[:2] == (0, "8080\n")
    assert config_data()["port"] == 8080
    assert load_settings().port == 8080
    rc, out, _ = cli("config", "unset", "port")
    assert rc == 0 and "default" in out
    assert cli("config", "get", "port")[:2] == (0, "7777\n")
    assert "port" not in config_data()


def test_dotted_tier_key_round_trip(cli: Cli) -> None:
    assert cli("config", "set", "tiers.haiku", "tiny")[0] == 0
    assert config_data()["tiers"] == {"haiku": "tiny"}
    assert cli("config", "get", "tiers.haiku")[1] == "tiny\n"
    assert cli("config", "unset", "tiers.haiku")[0] == 0
    assert cli("config", "get", "tiers.haiku")[1] == "\n"


def test_float_and_choice_values(cli: Cli) -> None:
    assert cli("config", "set", "temperature", "0.7")[0] == 0
    assert cli("config", "set", "engine", "llamacpp")[0] == 0
    assert config_data() == {"temperature": 0.7, "engine": "llamacpp"}


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("port", "abc", "port must be int"),
    ("port", "70000", "between 0 and 65535"),
    ("engine", "gpu", "must be one of"),
    ("temperature", "hot", "temperature must be float"),
])
def test_bad_value_is_one_line_usage_error(cli: Cli, key: str, value: str, needle: str) -> None:
    rc, out, err = cli("config", "set", key, value)
    assert rc == 2  # usage
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("pensieve: ") and needle in err
    assert "Traceback" not in err
    assert not config_path().exists()


def test_unknown_key_is_a_usage_error(cli: Cli) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["config", "set", "nope", "1"])
    assert exc.value.code == 2


def test_env_beats_file(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("config", "set", "port", "8080")
    monkeypatch.setenv("PENSIEVE_PORT", "9090")
    assert cli("config", "get", "port")[1] == "9090\n"
    rc, out, _ = cli("config", "list", "--json")
    assert rc == 0
    assert json.loads(out)["port"] == {"value": 9090, "source": "env"}
    assert config_data()["port"] == 8080  # the file keeps its own value


def test_list_json_has_every_option_with_value_and_source(cli: Cli) -> None:
    cli("config", "set", "port", "8080")
    cli("config", "set", "auth_token", "s3cret-token-value")
    rc, out, _ = cli("config", "list", "--json")
    assert rc == 0
    data = json.loads(out)
    assert list(data) == [o.name for o in OPTIONS]
    for option in OPTIONS:
        entry = data[option.name]
        assert set(entry) == {"value", "source"}
        assert entry["source"] in ("default", "file", "env", "flag", "token file")
    assert data["port"] == {"value": 8080, "source": "file"}
    assert isinstance(data["temperature"]["value"], float)
    assert "s3cret-token-value" not in out  # secrets only as fingerprints


def test_list_text_shows_sources(cli: Cli) -> None:
    cli("config", "set", "port", "8080")
    rc, out, _ = cli("config", "list")
    assert rc == 0
    port_line = next(line for line in out.splitlines() if line.startswith("port "))
    assert "8080" in port_line and "(file)" in port_line


def test_broken_config_file_is_one_line_error(cli: Cli) -> None:
    config_path().parent.mkdir(parents=True)
    config_path().write_text("port = = 1\n")
    rc, out, err = cli("config", "get", "port")
    assert rc == 2 and err.count("\n") == 1 and "not valid TOML" in err
    rc, out, err = cli("config", "unset", "port")
    assert rc == 1 and err.count("\n") == 1 and "not valid TOML" in err


def test_subprocess_round_trip(isolated_home: Path) -> None:
    env = {**os.environ}
    env.pop("PENSIEVE_PORT", None)
    exe = [sys.executable, "-m", "pensieve_cli.main"]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*exe, *argv], env=env, capture_output=True, text=True, timeout=60)

    assert run("config", "set", "tiers.sonnet", "tiny").returncode == 0
    got = run("config", "get", "tiers.sonnet")
    assert (got.returncode, got.stdout) == (0, "tiny\n")
    bad = run("config", "set", "port", "x")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert run("config", "path").stdout.strip() == str(config_path())


def test_pensieve_script_on_path(isolated_home: Path) -> None:
    """The installed ``pensieve`` entry point, as the person runs it."""
    import shutil

    script = shutil.which("pensieve")
    assert script is not None, "the pensieve script is part of the install (pip install -e .), not an option"
    result = subprocess.run([script, "config", "set", "port", "8123"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert subprocess.run([script, "config", "get", "port"], capture_output=True, text=True,
                          timeout=60).stdout == "8123\n"
