"""``pensieve cache``: where the prefix states on disk are, what they hold, and emptying them."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from pensieve_cli.main import main
from pensieve_server.engine.disk_states import DiskStates
from pensieve_server.settings import Paths

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def save_states(count: int) -> int:
    """``count`` states as a server would save them; their bytes on disk."""
    folder = Paths.resolve().prefix_states_dir
    disk = DiskStates(folder, {"engine": "llamacpp", "version": "test", "model": {"path": "/m.gguf"}}, 10**9)
    for i in range(count):
        tokens = np.arange(300) + 10_000 * i
        disk.write(tokens, bytes(range(256)) * 40)
    return sum(p.stat().st_size for p in folder.glob("*.kvstate"))


def test_info_list_clear(cli: Cli) -> None:
    folder = Paths.resolve().prefix_states_dir
    rc, out, err = cli("cache", "info", "--json")
    info = json.loads(out)
    assert rc == 0 and info["folder"] == str(folder) and info["files"] == 0 and info["bytes"] == 0
    assert info["enabled"] and 0 < info["limit_bytes"] <= 10 * 1024**3

    size = save_states(3)
    rc, out, _ = cli("cache", "info")
    assert rc == 0 and f"{folder}:" in out and "in 3 prefix states" in out
    rc, out, _ = cli("cache", "list", "--json")
    rows = json.loads(out)
    assert rc == 0 and len(rows) == 3 and {r["tokens"] for r in rows} == {300}
    assert sum(r["bytes"] for r in rows) == size and rows[0]["engine"] == "llamacpp" and rows[0]["model"] == "/m.gguf"
    rc, out, _ = cli("cache", "list")
    assert rc == 0 and len(out.splitlines()) == 4 and "llamacpp" in out

    rc, out, _ = cli("cache", "clear")
    assert rc == 0 and "removed 3 prefix states" in out
    assert not list(folder.glob("*.kvstate"))
    rc, out, _ = cli("cache", "clear", "--json")
    assert rc == 0 and json.loads(out)["removed"] == 0
    rc, out, _ = cli("cache", "list")
    assert rc == 0 and "no prefix states" in out


def test_the_setting_turns_it_off(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSIEVE_DISK_CACHE_BYTES", "0")
    rc, out, _ = cli("cache", "info")
    assert rc == 0 and "off (disk_cache_bytes = 0)" in out
    monkeypatch.setenv("PENSIEVE_DISK_CACHE_BYTES", "lots")
    rc, _, err = cli("cache", "info")
    assert rc == 2 and "disk_cache_bytes must be int" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_action_is_required(cli: Cli) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("cache")
    assert exited.value.code == 2
