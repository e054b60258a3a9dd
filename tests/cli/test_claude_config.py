"""Merging and safely writing Claude Code's config files, without the CLI: atomic, backed up, undoable."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pensieve_cli import claude_config
from pensieve_cli.claude_config import (
    BOM,
    ClaudePaths,
    ConfigFileError,
    ConfigWriter,
    Edit,
    NothingToUndo,
    json_transform,
    parse_json,
    render_json,
    toml_transform,
    with_env,
    with_onboarding,
)

ENV = {"ANTHROPIC_BASE_URL": "http://127.0.0.1:7777", "ANTHROPIC_AUTH_TOKEN": "pensieve-t"}


@pytest.fixture
def backups(tmp_path: Path) -> Path:
    return tmp_path / "backups"


def onboarding_edit(path: Path) -> Edit:
    return Edit(path, json_transform(path, with_onboarding))


def env_edit(path: Path, env: dict[str, str] = ENV) -> Edit:
    return Edit(path, json_transform(path, lambda data: with_env(data, env, path)))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- where the files are -----------------------------------------------------------------------------

def test_paths_default_to_the_home_folder(isolated_home: Path) -> None:
    paths = ClaudePaths.resolve()
    assert paths.claude_json == isolated_home / ".claude.json"
    assert paths.settings_json == isolated_home / ".claude" / "settings.json"


def test_paths_follow_claude_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "cc"))
    paths = ClaudePaths.resolve()
    assert paths.claude_json == tmp_path / "cc" / ".claude.json"
    assert paths.settings_json == tmp_path / "cc" / "settings.json"


# -- pure merging ------------------------------------------------------------------------------------

def test_onboarding_is_set_in_place_keeping_every_key_and_order() -> None:
    data = {"numStartups": 3, "hasCompletedOnboarding": False, "projects": {"/x": {"a": [1, 2]}}}
    merged = with_onboarding(data)
    assert list(merged) == ["numStartups", "hasCompletedOnboarding", "projects"]
    assert merged == {**data, "hasCompletedOnboarding": True}
    assert data["hasCompletedOnboarding"] is False  # input untouched


def test_env_is_merged_keeping_other_variables_and_keys() -> None:
    data = {"model": "opus", "env": {"FOO": "1", "ANTHROPIC_BASE_URL": "https://old"}, "permissions": {}}
    merged = with_env(data, ENV, Path("settings.json"))
    assert list(merged) == ["model", "env", "permissions"]
    assert list(merged["env"]) == ["FOO", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"]
    assert merged["env"]["FOO"] == "1" and merged["env"]["ANTHROPIC_BASE_URL"] == ENV["ANTHROPIC_BASE_URL"]


def test_env_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ConfigFileError, match=r'settings\.json: "env" must be a JSON object'):
        with_env({"env": ["x"]}, ENV, Path("settings.json"))


@pytest.mark.parametrize(
    "text",
    [
        '{\n  "a": 1,\n  "b": {\n    "c": [\n      1,\n      2\n    ]\n  }\n}',  # Claude Code's own style
        '{\n    "a": 1,\n    "b": "é"\n}\n',  # 4 spaces, trailing newline, raw UTF-8
        '{\n\t"a": 1\n}',
        '{"a":1,"b":[1,2]}',
        '{"a": 1, "b": [1, 2]}\n',
    ],
)
def test_render_keeps_the_file_style(text: str) -> None:
    raw = text.encode("utf-8")
    data, style = parse_json(raw, Path("x.json"))
    assert render_json(data, style) == raw


def test_bom_is_read_and_kept() -> None:
    raw = BOM + b'{\n  "a": 1\n}\n'
    data, style = parse_json(raw, Path("x.json"))
    assert data == {"a": 1} and style.bom
    assert render_json({"a": 1, "b": True}, style) == BOM + b'{\n  "a": 1,\n  "b": true\n}\n'


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{\n  "a": 1,\n  "b": 2,,\n}', r"x\.json is not valid JSON \(line 3, column 10"),
        (b'{"a": NaN}', r"x\.json: NaN is not valid JSON"),
        (b"[1, 2]", r"x\.json must hold a JSON object"),
        (b'{"a": "\xff"}', r"x\.json is not UTF-8 text"),
    ],
)
def test_broken_json_names_the_file_and_line(raw: bytes, expected: str) -> None:
    with pytest.raises(ConfigFileError, match=expected):
        parse_json(raw, Path("x.json"))


def test_missing_or_blank_json_is_an_empty_object() -> None:
    assert parse_json(None, Path("x"))[0] == {}
    assert parse_json(b" \n", Path("x"))[0] == {}


def test_transform_returns_the_same_bytes_when_nothing_changes() -> None:
    raw = b'{"hasCompletedOnboarding":true,"x":1}'
    assert json_transform(Path("x"), with_onboarding)(raw) is raw


def test_toml_transform_sets_dotted_keys_and_keeps_the_rest() -> None:
    raw = b'host = "127.0.0.1"\ntemperature = 0.5\n\n[tiers]\nhaiku = "old"\n'
    out = toml_transform(Path("c.toml"), {"port": 8080, "tiers.haiku": "m", "tiers.opus": "m"})(raw)
    import tomllib

    assert tomllib.loads(out.decode()) == {"host": "127.0.0.1", "temperature": 0.5, "port": 8080,
                                           "tiers": {"haiku": "m", "opus": "m"}}
    again = toml_transform(Path("c.toml"), {"port": 8080, "tiers.haiku": "m"})(out)
    assert again is out


def test_broken_toml_is_refused() -> None:
    with pytest.raises(ConfigFileError, match=r"c\.toml is not valid TOML"):
        toml_transform(Path("c.toml"), {"port": 1})(b"port = = 3")


# -- writing -----------------------------------------------------------------------------------------

def test_apply_creates_missing_files_and_folders_privately(tmp_path: Path, backups: Path) -> None:
    target = tmp_path / "home" / ".claude" / "settings.json"
    made = ConfigWriter(backups).apply([env_edit(target)])
    assert [c.path for c in made] == [target] and made[0].before is None
    assert json.loads(target.read_text()) == {"env": ENV}
    assert mode(target) == 0o600
    assert mode(target.parent) == 0o700


def test_apply_keeps_other_keys_order_and_permissions(tmp_path: Path, backups: Path) -> None:
    target = tmp_path / ".claude.json"
    target.write_text('{\n  "z": 1,\n  "hasCompletedOnboarding": false,\n  "a": {"b": [1]}\n}')
    target.chmod(0o640)
    ConfigWriter(backups).apply([onboarding_edit(target)])
    assert target.read_text() == '{\n  "z": 1,\n  "hasCompletedOnboarding": true,\n  "a": {\n    "b": [\n      1\n    ]\n  }\n}'
    assert mode(target) == 0o640


def test_second_apply_changes_nothing(tmp_path: Path, backups: Path) -> None:
    target = tmp_path / "settings.json"
    writer = ConfigWriter(backups)
    writer.apply([env_edit(target)])
    before, stat_before = target.read_bytes(), target.stat()
    assert writer.apply([env_edit(target)]) == []
    assert not any(c.changed for c in writer.plan([env_edit(target)]))
    assert target.read_bytes() == before and target.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert len(list(backups.iterdir())) == 1  # no new journal for a run that changed nothing


def test_invalid_json_is_never_overwritten(tmp_path: Path, backups: Path) -> None:
    good, bad = tmp_path / ".claude.json", tmp_path / "settings.json"
    bad.write_bytes(b'{\n  "env": {\n    "A": "1"\n  \n}')
    with pytest.raises(ConfigFileError, match=r"settings\.json is not valid JSON \(line 5"):
        ConfigWriter(backups).apply([onboarding_edit(good), env_edit(bad)])
    assert bad.read_bytes() == b'{\n  "env": {\n    "A": "1"\n  \n}'
    assert not good.exists() and not backups.exists()  # every file is checked before the first write


def test_read_only_file_is_refused(tmp_path: Path, backups: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text("{}")
    target.chmod(0o444)
    with pytest.raises(ConfigFileError, match=r"settings\.json is read-only; make it writable"):
        ConfigWriter(backups).apply([env_edit(target)])
    assert target.read_text() == "{}" and mode(target) == 0o444


def test_read_only_file_that_needs_no_change_is_fine(tmp_path: Path, backups: Path) -> None:
    target = tmp_path / ".claude.json"
    target.write_text('{"hasCompletedOnboarding": true}')
    target.chmod(0o444)
    assert ConfigWriter(backups).apply([onboarding_edit(target)]) == []


def test_symlink_is_written_through_and_stays_a_link(tmp_path: Path, backups: Path) -> None:
    real = tmp_path / "dotfiles" / "settings.json"
    real.parent.mkdir()
    real.write_text('{"theme": "dark"}')
    link = tmp_path / "settings.json"
    link.symlink_to(real)
    ConfigWriter(backups).apply([env_edit(link)])
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text()) == {"theme": "dark", "env": ENV}


def test_leaves_no_temp_files(tmp_path: Path, backups: Path) -> None:
    folder = tmp_path / "cc"
    folder.mkdir()
    target = folder / "settings.json"
    target.write_text("{}")
    ConfigWriter(backups).apply([env_edit(target)])
    assert [p.name for p in folder.iterdir()] == ["settings.json"]


# -- another program writing at the same moment ------------------------------------------------------

def test_concurrent_write_between_read_and_rename_is_kept(
    tmp_path: Path, backups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "settings.json"
    target.write_text('{"a": 1}')
    real_write_temp = claude_config._write_temp
    calls = []

    def racing_write_temp(dest: Path, data: bytes, file_mode: int, owner: object) -> Path:
        tmp = real_write_temp(dest, data, file_mode, owner)
        if dest == target:
            if not calls:  # Claude Code saves its settings right after Pensieve read them
                dest.write_text('{"a": 1, "theirs": true}')
            calls.append(dest)
        return tmp

    monkeypatch.setattr(claude_config, "_write_temp", racing_write_temp)
    made = ConfigWriter(backups).apply([env_edit(target)])
    assert len(calls) == 2  # merged again on their version
    assert json.loads(target.read_text()) == {"a": 1, "theirs": True, "env": ENV}
    assert made[0].before == b'{"a": 1, "theirs": true}'
    assert not list(tmp_path.glob(".settings.json.*"))


def test_a_file_that_never_stops_changing_is_refused(
    tmp_path: Path, backups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "settings.json"
    target.write_text("{}")
    real_write_temp = claude_config._write_temp
    counter = iter(range(100))

    def busy_writer(dest: Path, data: bytes, file_mode: int, owner: object) -> Path:
        tmp = real_write_temp(dest, data, file_mode, owner)
        if dest == target:
            dest.write_text(json.dumps({"n": next(counter)}))
        return tmp

    monkeypatch.setattr(claude_config, "_write_temp", busy_writer)
    with pytest.raises(ConfigFileError, match=r"settings\.json kept changing .* was not changed"):
        ConfigWriter(backups).apply([env_edit(target)])
    assert json.loads(target.read_text()) == {"n": 2}  # the other program's last write stands
    assert not list(tmp_path.glob(".settings.json.*"))


def test_a_failure_after_some_files_were_written_puts_them_back(
    tmp_path: Path, backups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, busy = tmp_path / "first.json", tmp_path / "busy" / "settings.json"
    first.write_text("{}")
    real_write_temp = claude_config._write_temp

    def busy_writer(dest: Path, data: bytes, file_mode: int, owner: object) -> Path:
        tmp = real_write_temp(dest, data, file_mode, owner)
        if dest == busy:
            dest.write_bytes(os.urandom(8).hex().join(["{\"x\": \"", "\"}"]).encode())
        return tmp

    monkeypatch.setattr(claude_config, "_write_temp", busy_writer)
    writer = ConfigWriter(backups)
    with pytest.raises(ConfigFileError, match=r"first\.json was put back as before, so nothing was changed"):
        writer.apply([onboarding_edit(first), env_edit(busy)])
    assert first.read_text() == "{}"
    with pytest.raises(NothingToUndo):  # the failed run was rolled back: nothing left to undo
        writer.undo()


def test_a_failure_that_cannot_be_rolled_back_says_how_to_undo(
    tmp_path: Path, backups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, busy = tmp_path / "first.json", tmp_path / "busy" / "settings.json"
    first.write_text("{}")
    real_write_temp = claude_config._write_temp

    def busy_writer(dest: Path, data: bytes, file_mode: int, owner: object) -> Path:
        tmp = real_write_temp(dest, data, file_mode, owner)
        if dest == busy:
            dest.write_bytes(os.urandom(8).hex().join(["{\"x\": \"", "\"}"]).encode())
            first.chmod(0o444)  # the rollback cannot write it back
        return tmp

    monkeypatch.setattr(claude_config, "_write_temp", busy_writer)
    writer = ConfigWriter(backups)
    with pytest.raises(ConfigFileError, match=r"already updated: .*first\.json \(`pensieve setup --undo` restores"):
        writer.apply([onboarding_edit(first), env_edit(busy)])
    first.chmod(0o644)
    writer.undo()
    assert first.read_text() == "{}"


def test_undo_also_undoes_an_unfinished_run_before_the_last(tmp_path: Path, backups: Path) -> None:
    """A run killed part way, then finished by the next one: one undo goes back to before both."""
    first, second = tmp_path / "first.json", tmp_path / "settings.json"
    first.write_bytes(b'{"a": 1}')
    second.write_bytes(b'{"b": 2}')
    writer = ConfigWriter(backups)
    writer.apply([onboarding_edit(first)])
    (journal,) = backups.glob(f"*/{claude_config.JOURNAL}")
    data = json.loads(journal.read_text())
    journal.write_text(json.dumps({**data, "status": "applying"}))  # as if killed before settings.json
    writer.apply([onboarding_edit(first), env_edit(second)])
    restored = writer.undo()
    assert first.read_bytes() == b'{"a": 1}' and second.read_bytes() == b'{"b": 2}'
    assert [(r.path, r.action) for r in restored] == [(first, "restored"), (second, "restored")]
    with pytest.raises(NothingToUndo):
        writer.undo()


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path: Path, backups: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text("{}")
    stale = tmp_path / f".settings.json.dead{claude_config.TEMP_SUFFIX}"
    young = tmp_path / f".settings.json.busy{claude_config.TEMP_SUFFIX}"
    stale.write_text("{")
    young.write_text("{")
    os.utime(stale, (1, 1))
    ConfigWriter(backups).apply([env_edit(target)])
    assert not stale.exists() and young.exists()  # a young one may be another run's, going on now


# -- undo --------------------------------------------------------------------------------------------

def test_undo_restores_bytes_and_mode_and_removes_created_files(tmp_path: Path, backups: Path) -> None:
    existing = tmp_path / ".claude.json"
    original = BOM + b'{"hasCompletedOnboarding":false,  "x": [1,2]}'
    existing.write_bytes(original)
    existing.chmod(0o604)
    created = tmp_path / "new" / "deeper" / "settings.json"
    writer = ConfigWriter(backups)
    writer.apply([onboarding_edit(existing), env_edit(created)])
    assert existing.read_bytes() != original

    restored = writer.undo()
    assert [(r.path, r.action) for r in restored] == [(existing, "restored"), (created, "removed")]
    assert existing.read_bytes() == original and mode(existing) == 0o604
    assert not (tmp_path / "new").exists()  # folders it created are gone too
    with pytest.raises(NothingToUndo):
        writer.undo()


def test_undo_goes_back_one_run_at_a_time(tmp_path: Path, backups: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text('{"mine": 1}')
    writer = ConfigWriter(backups)
    writer.apply([env_edit(target, {"PORT": "1"})])
    after_first = target.read_bytes()
    writer.apply([env_edit(target, {"PORT": "2"})])
    writer.undo()
    assert target.read_bytes() == after_first
    writer.undo()
    assert target.read_text() == '{"mine": 1}'


def test_undo_through_a_symlink_keeps_the_link(tmp_path: Path, backups: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("{ }")
    link = tmp_path / ".claude.json"
    link.symlink_to(real)
    writer = ConfigWriter(backups)
    writer.apply([onboarding_edit(link)])
    writer.undo()
    assert link.is_symlink() and real.read_text() == "{ }"


def test_undo_keeps_a_copy_of_later_changes(tmp_path: Path, backups: Path) -> None:
    target = tmp_path / ".claude.json"
    target.write_text("{}")
    writer = ConfigWriter(backups)
    writer.apply([onboarding_edit(target)])
    target.write_text('{"hasCompletedOnboarding": true, "numStartups": 9}')  # Claude Code ran since
    (restored,) = writer.undo()
    assert target.read_text() == "{}"
    assert restored.saved_copy is not None
    assert restored.saved_copy.read_text() == '{"hasCompletedOnboarding": true, "numStartups": 9}'


def test_undo_refuses_read_only_files_before_changing_any(tmp_path: Path, backups: Path) -> None:
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text("{}")
    two.write_text("{}")
    writer = ConfigWriter(backups)
    writer.apply([onboarding_edit(one), onboarding_edit(two)])
    one.chmod(0o444)
    with pytest.raises(ConfigFileError, match="one.json is read-only"):
        writer.undo()
    assert json.loads(two.read_text()) == {"hasCompletedOnboarding": True}


def test_journal_records_what_changed(tmp_path: Path, backups: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text("{}")
    ConfigWriter(backups).apply([env_edit(target)])
    (run,) = backups.iterdir()
    journal = json.loads((run / "journal.json").read_text())
    assert journal["status"] == "done" and journal["command"] == "setup"
    (entry,) = journal["files"]
    assert entry["path"] == str(target) and entry["existed"] is True
    assert (run / entry["backup"]).read_text() == "{}"
    assert mode(run / entry["backup"]) == 0o600
