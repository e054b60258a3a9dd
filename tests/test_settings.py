"""Settings precedence (flag > env > file > default) and PENSIEVE_HOME isolation."""

from __future__ import annotations

import dataclasses

import pytest

from pensieve_server.settings import OPTIONS, ConfigError, Paths, Settings, load_settings


def write_config(text: str) -> None:
    path = Paths.resolve().config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_defaults(isolated_home):
    settings = load_settings()
    assert (settings.host, settings.port, settings.default_model) == ("127.0.0.1", 7777, "smollm2-135m")
    assert settings.sources["port"] == "default"


def test_a_bare_settings_holds_the_options_defaults(isolated_home):
    """The OPTIONS table is the one place a default is written: Settings' own defaults are the same values."""
    resolved = load_settings(environ={"PENSIEVE_HOME": str(isolated_home / "fresh")})
    bare = Settings(paths=resolved.paths)
    assert bare.replace(auth_token=resolved.auth_token, sources=resolved.sources) == resolved
    names = {option.name for option in OPTIONS}
    assert {f.name for f in dataclasses.fields(Settings)} - names == {"paths", "tiers", "sources"}


def test_file_beats_default_env_beats_file_flag_beats_env(monkeypatch):
    write_config('port = 8001\ndefault_model = "from-file"\n[tiers]\nhaiku = "tiny"\n')
    settings = load_settings()
    assert (settings.port, settings.sources["port"]) == (8001, "file")
    assert settings.model_for_tier("haiku") == "tiny"
    assert settings.model_for_tier("opus") == "from-file"
    monkeypatch.setenv("PENSIEVE_PORT", "8002")
    assert load_settings().port == 8002
    assert load_settings().sources["port"] == "env"
    settings = load_settings({"port": 8003, "host": None})
    assert (settings.port, settings.sources["port"], settings.host) == (8003, "flag", "127.0.0.1")


def test_auth_token_env_overrides_token_file(monkeypatch):
    from pensieve_server.auth_token import ensure_token

    stored = ensure_token(Paths.resolve().token_file)
    assert load_settings().auth_token == stored
    monkeypatch.setenv("PENSIEVE_AUTH_TOKEN", "from-env")
    assert load_settings().auth_token == "from-env"


def test_token_file_is_private():
    from pensieve_server.auth_token import ensure_token

    path = Paths.resolve().token_file
    token = ensure_token(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_token(path) == token


def test_pensieve_home_puts_every_path_under_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PENSIEVE_HOME", str(tmp_path / "ph"))
    paths = Paths.resolve()
    for folder in (paths.config_dir, paths.data_dir, paths.cache_dir, paths.log_dir, paths.run_dir):
        assert folder.is_relative_to(tmp_path / "ph")


@pytest.mark.parametrize(
    "text, fragment",
    [("port = 'eighty'", "port must be int"), ("engine = 'cuda9'", "engine must be one of"),
     ("colour = 1", "unknown setting"), ("port = [", "not valid TOML"), ("port = 70000", "between 0 and 65535")],
)
def test_bad_config_is_one_clear_error(text, fragment):
    write_config(text)
    with pytest.raises(ConfigError, match=fragment):
        load_settings()


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("PENSIEVE_PORT", "x")
    with pytest.raises(ConfigError, match="PENSIEVE_PORT"):
        load_settings()
