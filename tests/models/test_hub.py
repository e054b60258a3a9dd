"""``pensieve models pull`` against a local stand-in Hub: install, resume, errors, integrity, progress output."""

from __future__ import annotations

import argparse
import io
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from pensieve_cli.errors import ExitStatus
from pensieve_cli.main import exit_status
from pensieve_cli.model_pull import ProgressView, run
from pensieve_server.models import catalog, hub, importer
from pensieve_server.models.hub import HubNotFound, Progress
from pensieve_server.models.store import MANIFEST, ModelError, ModelStore
from pensieve_server.settings import Paths
from tests.standin_hub import Drop, StandinHub, StandinRepo, gguf_bytes, gguf_repo_files, mlx_repo_files

MLX = "acme/tiny-mlx"
GGUF = "acme/tiny-GGUF"
WEIGHTS = "model.safetensors"


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandinHub]:
    """The stand-in Hub with an MLX and a GGUF repo; the environment pointed at it, retries instant."""
    from huggingface_hub import constants, file_download

    with StandinHub() as server:
        server.add(StandinRepo(MLX, mlx_repo_files()))
        server.add(StandinRepo(GGUF, gguf_repo_files()))
        monkeypatch.setenv("HF_ENDPOINT", server.base_url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        # http_get sleeps 1 s before each retry; and httpx keeps up to DOWNLOAD_CHUNK_SIZE (10 MB) in a
        # buffer that a dropped connection loses, so small chunks make partial files visible in tests.
        monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda _s: None))
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
        yield server


@pytest.fixture
def store() -> ModelStore:
    return ModelStore(Paths.resolve().models_dir)


def names(store: ModelStore) -> set[str]:
    return {e.name for e in store.list() if not e.builtin}


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and message
    return message


# -- installing ----------------------------------------------------------------------------------------


def test_pull_mlx_installs_lists_and_cleans_up(standin: StandinHub, store: ModelStore) -> None:
    events: list[Progress] = []
    entry = hub.pull(store, MLX, progress=events.append)

    assert entry.name == "tiny-mlx" and entry.format == "mlx"
    assert entry.context_length == 2048 and entry.architecture == "llama"
    assert entry.source == f"hf:{MLX}@{standin.repos[MLX].commit}"
    folder = Path(entry.path)
    assert folder == store.folder("tiny-mlx")
    for name in ("config.json", WEIGHTS, "tokenizer.json", "tokenizer_config.json", MANIFEST):
        assert (folder / name).is_file()
    assert (folder / WEIGHTS).read_bytes() == standin.repos[MLX].files[WEIGHTS]
    assert not (folder / ".gitattributes").exists()
    assert names(store) == {"tiny-mlx"} and store.get("tiny-mlx") == entry
    assert not any((store.root / hub.DOWNLOADS).iterdir())  # the download folder is gone
    # progress: every file started and finished, then verified, installed, done at 100 %
    downloads = [e for e in events if e.phase == "download"]
    assert {e.file for e in downloads} == {"README.md", "config.json", WEIGHTS, "tokenizer.json",
                                           "tokenizer_config.json"}
    assert max(e.done for e in downloads) == entry.size_bytes
    assert [e.phase for e in events if e.phase not in ("download", "verify")] == ["install", "done"]
    assert events[-1].done == events[-1].total == entry.size_bytes
    # the token-free CDN redirect was followed for the LFS file, with a HEAD on the Hub first
    assert ("HEAD", f"/{MLX}/resolve/{standin.repos[MLX].commit}/{WEIGHTS}", None) in standin.requests
    assert any("/cdn/" in r[1] for r in standin.data_requests(WEIGHTS))


def test_the_token_goes_to_the_hub_but_not_to_the_cdn(standin: StandinHub, store: ModelStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    hub.pull(store, MLX)
    paths = {path for _method, path in standin.authorized}
    assert f"/api/models/{MLX}/revision/main" in paths
    assert any("/resolve/" in p and p.endswith(WEIGHTS) for p in paths)  # the HEAD on the Hub
    assert not any("/cdn/" in p for p in paths) and any("/cdn/" in r[1] for r in standin.requests)


def test_pull_gguf_picks_the_4bit_file_and_reads_its_metadata(standin: StandinHub, store: ModelStore) -> None:
    entry = hub.pull(store, GGUF)
    assert entry.format == "gguf" and entry.name == "tiny-q4_k_m"
    assert Path(entry.path) == store.folder(entry.name) / "tiny-Q4_K_M.gguf"
    assert Path(entry.path).read_bytes()[:4] == b"GGUF"
    assert entry.context_length == 2048 and entry.architecture == "llama"
    fetched = {r[1] for r in standin.data_requests()}
    assert len(fetched) == 1  # only the chosen quantisation; no README, no projector, no Q8_0


def test_pull_gguf_with_a_quant_selector_and_a_name(standin: StandinHub, store: ModelStore) -> None:
    entry = hub.pull(store, f"{GGUF}:Q8_0", name="tiny-q8")
    assert entry.name == "tiny-q8" and entry.path.endswith("tiny-Q8_0.gguf")
    with pytest.raises(HubNotFound) as info:
        hub.pull(store, f"{GGUF}:q2_k")
    assert "q4_k_m" in one_line(info.value) and "q8_0" in str(info.value)


def test_catalogue_alias_resolves_to_its_repo_per_format(standin: StandinHub, store: ModelStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = catalog.CatalogEntry("tiny", MLX, GGUF, "1M", 300_000, 1024, 1, "test entry")
    monkeypatch.setitem(catalog.CATALOG_BY_ALIAS, "tiny", tiny)
    gguf = hub.pull(store, "tiny", prefer="gguf")
    assert (gguf.name, gguf.format, gguf.context_length) == ("tiny", "gguf", 1024)
    mlx = hub.pull(store, "tiny", name="tiny-mlx-version", prefer="mlx")
    assert mlx.format == "mlx" and mlx.source.startswith(f"hf:{MLX}@")


def test_existing_name_and_embedded_alias_fail_before_downloading(standin: StandinHub, store: ModelStore) -> None:
    hub.pull(store, MLX)
    standin.requests.clear()
    with pytest.raises(ModelError, match="already exists"):
        hub.pull(store, MLX)
    with pytest.raises(ModelError, match="embedded"):
        hub.pull(store, "smollm2-135m")
    assert standin.data_requests() == []  # the file list is asked for, no file


def test_revision_pins_a_commit_and_unknown_revision_is_not_found(standin: StandinHub, store: ModelStore) -> None:
    commit = standin.repos[MLX].commit
    assert hub.pull(store, MLX, revision=commit).source.endswith(commit)
    with pytest.raises(HubNotFound, match="revision 'v9' not found"):
        hub.pull(store, MLX, revision="v9", name="other")


# -- resuming ------------------------------------------------------------------------------------------


def test_a_dropped_connection_is_resumed_within_the_run(standin: StandinHub, store: ModelStore) -> None:
    standin.drops[WEIGHTS] = Drop(after=100_000, times=1)
    entry = hub.pull(store, MLX)
    assert (Path(entry.path) / WEIGHTS).read_bytes() == standin.repos[MLX].files[WEIGHTS]
    ranges = [r[2] for r in standin.data_requests(WEIGHTS)]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")


def test_resume_after_the_network_is_lost(standin: StandinHub, store: ModelStore) -> None:
    standin.drops[WEIGHTS] = Drop(after=100_000, times=100)  # every retry of this run fails too
    with pytest.raises(ModelError) as info:
        hub.pull(store, MLX)
    assert one_line(info.value) == (f"network lost while downloading {MLX}/{WEIGHTS}; "
                                    "run the same command again to resume")
    assert names(store) == set()  # a half-finished download is never listed
    [folder] = (store.root / hub.DOWNLOADS).iterdir()
    partial = folder / (WEIGHTS + hub.INCOMPLETE)
    kept = partial.stat().st_size
    assert 0 < kept <= 100_000
    assert (folder / "config.json").is_file()  # finished before the weights

    standin.drops.clear()
    standin.requests.clear()
    plan = hub.plan(store, MLX)
    assert plan.have_bytes >= kept
    entry = hub.download(store, plan)

    weights = standin.data_requests(WEIGHTS)
    assert weights[0][2] == f"bytes={kept}-"  # resumed, not restarted
    assert standin.data_requests("config.json") == [] and standin.data_requests("README.md") == []
    assert (Path(entry.path) / WEIGHTS).read_bytes() == standin.repos[MLX].files[WEIGHTS]
    assert names(store) == {"tiny-mlx"}


# -- errors --------------------------------------------------------------------------------------------


def test_repo_not_found_is_one_clear_line(standin: StandinHub, store: ModelStore) -> None:
    with pytest.raises(HubNotFound) as info:
        hub.pull(store, "acme/nope")
    assert one_line(info.value) == ("acme/nope not found on Hugging Face; check the name or pass HF_TOKEN "
                                    "for private repos")
    standin.fail[MLX] = 404
    with pytest.raises(HubNotFound, match="not found on Hugging Face"):
        hub.pull(store, MLX)
    with pytest.raises(HubNotFound, match="unknown model 'nothing-like-this'"):
        hub.pull(store, "nothing-like-this")


def test_unauthorized_says_the_token_is_missing_or_invalid(standin: StandinHub, store: ModelStore,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    standin.fail[MLX] = 401
    with pytest.raises(ModelError) as info:
        hub.pull(store, MLX)
    assert "HF_TOKEN missing or invalid" in one_line(info.value)
    assert names(store) == set()


def test_gated_repo_says_to_accept_the_terms(standin: StandinHub, store: ModelStore) -> None:
    standin.repos[MLX].gated = True
    with pytest.raises(ModelError) as info:
        hub.pull(store, MLX)
    message = one_line(info.value)
    assert message.startswith(f"{MLX} is gated") and "HF_TOKEN" in message and standin.base_url in message
    assert names(store) == set()


def test_network_down_before_starting(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    server = StandinHub().start()
    url = server.base_url
    server.stop()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelError) as info:
        hub.pull(store, MLX)
    assert "network lost" in one_line(info.value)


def test_not_enough_disk_space_fails_before_downloading(standin: StandinHub, store: ModelStore,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=10_000))
    with pytest.raises(ModelError) as info:
        hub.pull(store, MLX)
    assert one_line(info.value).startswith(f"not enough disk space for {MLX}: 262.6 KB still to download")
    assert standin.data_requests() == []
    assert names(store) == set()


def test_integrity_failure_installs_nothing_and_a_rerun_fixes_it(standin: StandinHub, store: ModelStore) -> None:
    standin.corrupt.add(WEIGHTS)
    with pytest.raises(ModelError) as info:
        hub.pull(store, MLX)
    assert "does not match its SHA-256" in one_line(info.value)
    assert names(store) == set()
    [folder] = (store.root / hub.DOWNLOADS).iterdir()
    assert not (folder / WEIGHTS).exists() and (folder / "config.json").exists()

    standin.corrupt.clear()
    standin.requests.clear()
    hub.pull(store, MLX)
    assert names(store) == {"tiny-mlx"}
    assert {r[1] for r in standin.data_requests()} == {r[1] for r in standin.data_requests(WEIGHTS)}


def test_small_files_are_checked_against_their_git_blob_id(standin: StandinHub, store: ModelStore) -> None:
    standin.corrupt.add("config.json")
    with pytest.raises(ModelError, match="config.json does not match its git blob id"):
        hub.pull(store, MLX)
    assert names(store) == set()


def test_a_repo_that_is_not_a_model_is_refused(standin: StandinHub, store: ModelStore) -> None:
    standin.add(StandinRepo("acme/pytorch-only", {"config.json": b"{}", "pytorch_model.bin": b"x" * 100}))
    with pytest.raises(ModelError, match="neither MLX weights"):
        hub.pull(store, "acme/pytorch-only")
    files = mlx_repo_files()
    del files["tokenizer.json"]
    standin.add(StandinRepo("acme/no-tokenizer", files))
    with pytest.raises(ModelError, match="no tokenizer"):
        hub.pull(store, "acme/no-tokenizer")
    assert names(store) == set()


@pytest.mark.parametrize(("data", "why"), [
    (gguf_bytes()[:60], "is not a valid GGUF file: the metadata runs past the end of the file (truncated)"),
    (gguf_bytes(architecture="bert"), "is an embedding model (architecture 'bert'), not a chat model"),
], ids=["truncated", "not-a-chat-model"])
def test_a_pulled_gguf_is_refused_like_an_imported_one(standin: StandinHub, store: ModelStore, tmp_path: Path,
                                                       data: bytes, why: str) -> None:
    """The Hub serves the bytes it has: the hashes match, yet the file is no model to install."""
    standin.add(StandinRepo("acme/odd-GGUF", {"odd-Q4_K_M.gguf": data}))
    with pytest.raises(ModelError) as pulled:
        hub.pull(store, "acme/odd-GGUF")
    local = tmp_path / "odd-Q4_K_M.gguf"
    local.write_bytes(data)
    with pytest.raises(ModelError) as imported:
        importer.import_model(store, local)
    assert one_line(pulled.value).startswith(f"acme/odd-GGUF/odd-Q4_K_M.gguf {why}")
    assert one_line(pulled.value).removeprefix("acme/odd-GGUF/odd-Q4_K_M.gguf") == \
        one_line(imported.value).removeprefix(str(local))
    assert names(store) == set()


# -- offline and the Hugging Face cache ----------------------------------------------------------------


def _fill_hf_cache(repo: StandinRepo, endpoint: str, cache: Path) -> None:
    from huggingface_hub import hf_hub_download

    for path in repo.files:
        hf_hub_download(repo.repo_id, path, cache_dir=cache, endpoint=endpoint)


def test_offline_with_nothing_cached_is_one_clear_line(standin: StandinHub, store: ModelStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        hub.pull(store, MLX)
    assert "offline mode is on (HF_HUB_OFFLINE)" in one_line(info.value)
    assert standin.requests == []


def test_files_in_the_hf_cache_are_copied_not_downloaded(standin: StandinHub, store: ModelStore,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill_hf_cache(standin.repos[MLX], standin.base_url, tmp_path / "hf" / "hub")
    standin.requests.clear()
    hub.pull(store, MLX)
    assert standin.data_requests() == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    standin.requests.clear()
    entry = hub.pull(store, MLX, name="offline-copy")
    assert entry.format == "mlx" and standin.requests == []


# -- the CLI -------------------------------------------------------------------------------------------


def args(spec: str, **extra: object) -> argparse.Namespace:
    values = {"spec": spec, "revision": None, "name": None, "yes": True, "quiet": False, "verbose": False}
    return argparse.Namespace(**{**values, **extra})


def test_cli_pull_prints_progress_the_model_and_the_next_step(standin: StandinHub,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run(args(MLX)) == ExitStatus.OK
    out, err = capsys.readouterr()
    assert f"Pulling {MLX}@" in out and "'tiny-mlx'" in out
    assert "Installed tiny-mlx" in out and "pensieve models default tiny-mlx" in out
    assert f"{WEIGHTS} (262.2 KB)" in err and "[5/5, 100%]" in err  # a line per finished file
    assert "Verifying 5 files" in err and "Installing tiny-mlx" in err
    assert "\x1b[" not in err  # not a terminal: plain lines


def test_cli_quiet_prints_only_the_name(standin: StandinHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(args(GGUF, quiet=True)) == ExitStatus.OK
    out, err = capsys.readouterr()
    assert out == "tiny-q4_k_m\n" and err == ""


def test_cli_errors_are_one_line_with_their_exit_status(standin: StandinHub) -> None:
    with pytest.raises(ModelError) as info:
        run(args("acme/nope"))
    assert exit_status(info.value) == ExitStatus.NOT_FOUND and "\n" not in str(info.value)
    standin.fail[MLX] = 401
    with pytest.raises(ModelError) as info:
        run(args(MLX))
    assert exit_status(info.value) == ExitStatus.ERROR and "HF_TOKEN missing or invalid" in str(info.value)


def test_cli_reports_a_resume(standin: StandinHub, capsys: pytest.CaptureFixture[str]) -> None:
    standin.drops[WEIGHTS] = Drop(after=100_000, times=100)
    with pytest.raises(ModelError, match="run the same command again to resume"):
        run(args(MLX))
    standin.drops.clear()
    capsys.readouterr()
    assert run(args(MLX)) == ExitStatus.OK
    assert "already downloaded, resuming" in capsys.readouterr().out


def test_terminal_progress_draws_file_and_total_bars(standin: StandinHub, store: ModelStore) -> None:
    screen = io.StringIO()
    view = ProgressView(screen, tty=True, interval=0)
    hub.pull(store, MLX, progress=view)
    view.close()
    text = screen.getvalue()
    assert "\x1b[1A\x1b[2K" in text  # redrawn in place
    assert f"  {WEIGHTS}" in text and "total" in text and "[########" in text and "100%" in text
