"""``pensieve setup --upstream``, the upstream settings and doctor's upstream check."""

from __future__ import annotations

import os
import stat

import pytest
import tomllib

from pensieve_cli.commands import setup
from pensieve_cli.doctor import upstream
from pensieve_cli.doctor.checklist import checks_for
from pensieve_cli.doctor.context import Context
from pensieve_cli.main import main
from pensieve_server.settings import ConfigError, Paths, load_settings
from tests.upstream.conftest import free_port
from tests.upstream.fakes import fake_openai

KEY = "sk-upstream-0123456789"


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup, "server_health", lambda base_url: None)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def config() -> dict:
    return tomllib.loads(Paths.resolve().config_file.read_text())


def test_setup_stores_the_upstream_and_hides_its_key(cli) -> None:
    with fake_openai(models=["qwen2.5-coder:7b"]) as fake:
        rc, out, err = cli("setup", "--yes", "--upstream", fake.url, "--upstream-model", "qwen2.5-coder:7b",
                           "--upstream-api-key", KEY, "--upstream-context-length", "32768")
    assert rc == 0, err
    assert KEY not in out + err
    stored = config()
    assert stored["engine"] == "upstream" and stored["upstream_url"] == fake.url
    assert stored["upstream_model"] == "qwen2.5-coder:7b" and stored["upstream_api_key"] == KEY
    assert stored["upstream_context_length"] == 32768
    assert stat.S_IMODE(Paths.resolve().config_file.stat().st_mode) == 0o600
    settings = load_settings()
    assert settings.default_model == "qwen2.5-coder:7b" and set(settings.tiers.values()) == {"qwen2.5-coder:7b"}
    assert KEY not in repr(settings)
    assert "pensieve models pull" not in out  # nothing to download

    rc, out, err = cli("setup", "--yes")  # run again: the upstream stays
    assert rc == 0, err
    assert config()["engine"] == "upstream" and "nothing to change" in out

    rc, _, err = cli("setup", "--yes", "--model", "smollm2-135m")  # back to a local model
    assert rc == 0, err
    assert config()["engine"] == "auto" and load_settings().default_model == "smollm2-135m"


def test_setup_asks_the_upstream_for_its_model(cli) -> None:
    with fake_openai(models=["first-one", "second"]) as fake:
        rc, out, err = cli("setup", "--yes", "--upstream", fake.url)
    assert rc == 0, err
    assert config()["upstream_model"] == "first-one" and "serves first-one" in out
    assert [r.path for r in fake.requests] == ["/v1/models"]


def test_setup_with_an_unreachable_upstream_leaves_the_model_to_discover(cli) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    rc, out, err = cli("setup", "--yes", "--upstream", url)
    assert rc == 0, err
    assert "unreachable" in out + err
    assert config()["upstream_model"] == "" and load_settings().default_model == "upstream"


@pytest.mark.parametrize(("argv", "message"), [
    (["--upstream-model", "m"], "go with --upstream URL"),
    (["--upstream", "http://x", "--model", "smollm2-135m"], "use one"),
    (["--upstream", "localhost:8000"], "must be an http:// or https:// URL"),
    (["--undo", "--upstream", "http://x"], "--undo cannot be combined"),
])
def test_bad_upstream_flags(cli, argv, message) -> None:
    rc, _, err = cli("setup", "--yes", *argv)
    assert rc == 2 and message in err


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSIEVE_ENGINE", "upstream")
    assert load_settings().default_model == "upstream"  # the upstream's first model, found when serving
    monkeypatch.setenv("PENSIEVE_UPSTREAM_MODEL", "llama3.1:8b")
    assert load_settings().default_model == "llama3.1:8b"
    monkeypatch.setenv("PENSIEVE_DEFAULT_MODEL", "other")
    assert load_settings().default_model == "other"  # set on purpose: kept
    monkeypatch.setenv("PENSIEVE_UPSTREAM_URL", "ftp://nope")
    with pytest.raises(ConfigError, match="upstream_url must be an http"):
        load_settings()


def test_doctor_unreachable_and_skips_local_model_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSIEVE_ENGINE", "upstream")
    monkeypatch.setenv("PENSIEVE_UPSTREAM_URL", f"http://127.0.0.1:{free_port()}")
    ctx = Context(load_settings(), os.environ, health=None)
    result = upstream.check_upstream(ctx)
    assert (result.name, result.status) == ("upstream", "fail") and "unreachable" in result.detail
    assert result.fix.startswith("start the upstream server")
    results = {line.name: line for line in (check(ctx) for check in checks_for(ctx.settings))}
    assert results["upstream"] == result and results["engine"].detail.startswith("configured: upstream")
    for name in ("mlx", "gpu", "model loads", "resources", "disk cache"):
        assert results[name].status == "skip" and "requests go to the upstream" in results[name].detail
    assert all(r.status in ("ok", "warn", "fail", "skip") and r.detail for r in results.values())


def test_doctor_warns_when_the_model_is_not_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_openai(models=["a", "b"]) as fake:
        monkeypatch.setenv("PENSIEVE_ENGINE", "upstream")
        monkeypatch.setenv("PENSIEVE_UPSTREAM_URL", fake.url)
        monkeypatch.setenv("PENSIEVE_UPSTREAM_MODEL", "c")
        result = upstream.check_upstream(Context(load_settings(), os.environ, health=None))
    assert result.status == "warn" and "does not list the model 'c'" in result.detail and "a, b" in result.detail
