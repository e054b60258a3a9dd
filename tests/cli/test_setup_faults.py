"""``pensieve setup`` when things go wrong part way: the process killed at each step, the disk full.

Whatever happens, Claude Code's files are either as they were or fully updated (never half-written),
a later ``pensieve setup --yes`` finishes the job and one ``pensieve setup --undo`` puts the original
bytes back. No test hook lives in the product: the kill is a patched ``os.replace`` in a child
process, the full disk a patched ``os.fdopen`` in this one.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pensieve_cli.claude_config import TEMP_SUFFIX
from pensieve_cli.commands import setup
from pensieve_cli.main import main
from pensieve_server.settings import Paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]

ORIGINAL_CLAUDE_JSON = b'{\n    "numStartups": 3,\n    "hasCompletedOnboarding": false,\n    "projects": {"/x": {}}\n}\n'
ORIGINAL_SETTINGS_JSON = b'{"env": {"FOO": "bar"}, "theme": "dark"}'
ORIGINAL_CONFIG_TOML = b"# mine\nport = 7001\n"

# Runs `pensieve <argv>` and kills itself (SIGKILL: no cleanup, no flush) at the nth os.replace whose
# destination's name matches the pattern, just before or just after that rename.
CRASHER = """
import fnmatch, os, signal, sys
pattern, nth, when, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
real_replace, seen = os.replace, [0]

def replace(src, dst, *args, **kwargs):
    hit = fnmatch.fnmatchcase(os.path.basename(os.fspath(dst)), pattern)
    seen[0] += hit
    if hit and seen[0] == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if hit and seen[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
from pensieve_cli.main import main
sys.exit(main(argv))
"""

# (id, destination name, nth such rename, before/after it) in the order setup reaches them.
CRASH_POINTS = [
    ("token-written", "token", 1, "after"),
    ("claude.json-backed-up", "0-claude.json", 1, "after"),
    ("claude.json-journaled", "journal.json", 1, "after"),
    ("claude.json-about-to-rename", ".claude.json", 1, "before"),
    ("claude.json-renamed", ".claude.json", 1, "after"),
    ("settings.json-backed-up", "1-settings.json", 1, "after"),
    ("settings.json-journaled", "journal.json", 2, "after"),
    ("settings.json-renamed", "settings.json", 1, "after"),
    ("config.toml-journaled", "journal.json", 3, "after"),
    ("config.toml-renamed", "config.toml", 1, "after"),
    ("all-written-journal-not-done", "journal.json", 4, "before"),
]


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup, "server_health", lambda base_url: None)


@pytest.fixture
def port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def user_files(home: Path) -> dict[str, Path]:
    return {"claude.json": home / ".claude.json", "settings.json": home / ".claude" / "settings.json",
            "config.toml": Paths.resolve().config_file}


@pytest.fixture
def originals(isolated_home: Path) -> dict[str, tuple[bytes, int]]:
    """The person's own files, with their own modes: what --undo must give back exactly."""
    contents = {"claude.json": (ORIGINAL_CLAUDE_JSON, 0o644), "settings.json": (ORIGINAL_SETTINGS_JSON, 0o640),
                "config.toml": (ORIGINAL_CONFIG_TOML, 0o600)}
    for name, path in user_files(isolated_home).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(contents[name][0])
        path.chmod(contents[name][1])
    return contents


def state(home: Path) -> dict[str, tuple[bytes, int] | None]:
    return {name: (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) if path.exists() else None
            for name, path in user_files(home).items()}


def assert_valid(home: Path) -> None:
    """Every file parses: nothing truncated or half-written."""
    files = user_files(home)
    json.loads(files["claude.json"].read_bytes())
    json.loads(files["settings.json"].read_bytes())
    tomllib.loads(files["config.toml"].read_text())


def leftover_temps(home: Path) -> list[Path]:
    return [p for path in user_files(home).values() for p in path.parent.glob(f".*{TEMP_SUFFIX}")]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- killed part way ---------------------------------------------------------------------------------

def run_killed(pattern: str, nth: int, when: str, port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", CRASHER, pattern, str(nth), when, "setup", "--yes", "-q",
                           "--port", str(port)],
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("pattern", "nth", "when"), [p[1:] for p in CRASH_POINTS],
                         ids=[p[0] for p in CRASH_POINTS])
def test_killed_setup_leaves_whole_files_and_undo_restores_them(
    pattern: str, nth: int, when: str, port: int, originals: dict[str, tuple[bytes, int]],
    isolated_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    home, pensieve_home = isolated_home, Path(os.environ["PENSIEVE_HOME"])
    proc = run_killed(pattern, nth, when, port)
    assert proc.returncode == -signal.SIGKILL, f"the crash point was not reached: {proc.stderr}"

    # Right after the kill: each file whole, either untouched or updated, and still where it was.
    crashed = state(home)
    assert_valid(home)
    for temp in leftover_temps(home):
        assert temp.name.startswith(".") and temp.name.endswith(TEMP_SUFFIX)  # hidden, never the real name

    # Undo straight away puts everything back (or there is nothing recorded, and nothing changed).
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path, saved, symlinks=True, ignore=shutil.ignore_patterns("saved"))
    rc, _, err = cli(capsys, "setup", "--undo")
    assert rc in (0, 3), err
    assert state(home) == originals

    # Or: run setup again (later: the temp files of the killed run are old by then); it finishes the job.
    for root in (home, pensieve_home):
        shutil.rmtree(root)
        shutil.copytree(saved / root.name, root, symlinks=True)
    for temp in leftover_temps(home):
        os.utime(temp, (time.time() - 3600,) * 2)
    rc, _, err = cli(capsys, "setup", "--yes", "-q", "--port", str(port))
    assert rc == 0, err
    assert_valid(home)
    assert leftover_temps(home) == []
    finished = state(home)
    for name, content in crashed.items():
        assert content in (originals[name], finished[name]), f"{name} was neither untouched nor fully updated"
    data = json.loads(user_files(home)["settings.json"].read_bytes())
    assert data["theme"] == "dark" and data["env"]["FOO"] == "bar" and str(port) in data["env"]["ANTHROPIC_BASE_URL"]
    assert json.loads(user_files(home)["claude.json"].read_bytes())["hasCompletedOnboarding"] is True

    # One undo: back to the bytes and modes from before the killed run.
    rc, _, err = cli(capsys, "setup", "--undo")
    assert rc == 0, err
    assert state(home) == originals
    assert cli(capsys, "setup", "--undo")[0] == 3  # nothing left to undo


# -- the disk is full --------------------------------------------------------------------------------

class FullDisk:
    """Fails every write to files whose name matches ``pattern``, from the ``nth`` on (or only that one)."""

    def __init__(self, pattern: str, nth: int = 1, stays_full: bool = False) -> None:
        self.pattern, self.nth, self.stays_full = pattern, nth, stays_full
        self.seen = 0
        self.failed = 0
        self.full = False
        self.real_fdopen = os.fdopen

    def fdopen(self, fd: int, mode: str = "r", *args: object, **kwargs: object):  # noqa: ANN201 - a file object
        handle = self.real_fdopen(fd, mode, *args, **kwargs)
        if "r" in mode and "+" not in mode:
            return handle
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if fnmatch.fnmatchcase(name, self.pattern):
            self.seen += 1
            if self.seen == self.nth:
                self.full = True
        if self.full:
            return _FailingWriter(handle, self)
        return handle


class _FailingWriter:
    def __init__(self, handle, disk: FullDisk) -> None:  # noqa: ANN001
        self._handle, self._disk = handle, disk

    def write(self, data: bytes | str) -> int:
        self._handle.write(data[: len(data) // 2])  # part of it lands, as on a real full disk
        self._handle.flush()
        self._disk.failed += 1
        if not self._disk.stays_full:
            self._disk.full = False
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> object:
        return getattr(self._handle, name)

    def __enter__(self) -> _FailingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


pytestmark_linux = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files via /proc")

# (id, pattern of the file being written when the disk fills) in the order setup writes them.
FULL_POINTS = [
    ("token", ".token.*"),
    ("claude.json", f"..claude.json.*{TEMP_SUFFIX}"),
    ("claude.json-backup", f".0-claude.json.*{TEMP_SUFFIX}"),
    ("journal", f".journal.json.*{TEMP_SUFFIX}"),
    ("settings.json", f".settings.json.*{TEMP_SUFFIX}"),
    ("settings.json-backup", f".1-settings.json.*{TEMP_SUFFIX}"),
    ("config.toml", f".config.toml.*{TEMP_SUFFIX}"),
]


def assert_disk_full_error(rc: int, out: str, err: str) -> None:
    assert rc == 1
    assert err.startswith("pensieve: ") and err.count("\n") == 1, err  # one line
    assert "disk is full" in err and "No space left on device" in err
    assert "Traceback" not in out + err


@pytestmark_linux
@pytest.mark.parametrize("pattern", [p[1] for p in FULL_POINTS], ids=[p[0] for p in FULL_POINTS])
def test_full_disk_changes_nothing_and_the_next_setup_works(
    pattern: str, port: int, originals: dict[str, tuple[bytes, int]], isolated_home: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """One write does not fit (the new file is the bigger one): the files already written go back."""
    disk = FullDisk(pattern)
    monkeypatch.setattr(os, "fdopen", disk.fdopen)
    rc, out, err = cli(capsys, "setup", "--yes", "-q", "--port", str(port))
    assert disk.failed == 1
    assert_disk_full_error(rc, out, err)
    assert state(isolated_home) == originals
    assert leftover_temps(isolated_home) == []

    monkeypatch.setattr(os, "fdopen", disk.real_fdopen)  # space freed
    assert cli(capsys, "setup", "--undo")[0] == 3  # the failed run left nothing to undo
    rc, _, err = cli(capsys, "setup", "--yes", "-q", "--port", str(port))
    assert rc == 0, err
    assert_valid(isolated_home)
    assert state(isolated_home) != originals
    assert cli(capsys, "setup", "--undo")[0] == 0
    assert state(isolated_home) == originals


@pytestmark_linux
@pytest.mark.parametrize("pattern", [p[1] for p in FULL_POINTS], ids=[p[0] for p in FULL_POINTS])
def test_disk_that_stays_full_and_undo_after_freeing_space(
    pattern: str, port: int, originals: dict[str, tuple[bytes, int]], isolated_home: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Every write fails from some point on, so files already renamed cannot be put back at once:
    they are whole, the error names them and --undo, and --undo works once there is space."""
    disk = FullDisk(pattern, stays_full=True)
    monkeypatch.setattr(os, "fdopen", disk.fdopen)
    rc, out, err = cli(capsys, "setup", "--yes", "-q", "--port", str(port))
    assert disk.failed >= 1
    assert_disk_full_error(rc, out, err)
    assert_valid(isolated_home)
    after = state(isolated_home)
    changed = [name for name in after if after[name] != originals[name]]
    if changed:
        assert "already updated" in err and "`pensieve setup --undo` restores them" in err
        assert all(name in err for name in changed)
    assert leftover_temps(isolated_home) == []

    monkeypatch.setattr(os, "fdopen", disk.real_fdopen)  # space freed
    rc, _, err = cli(capsys, "setup", "--undo")
    assert rc == (0 if changed else 3), err
    assert state(isolated_home) == originals
    rc, _, err = cli(capsys, "setup", "--yes", "-q", "--port", str(port))
    assert rc == 0, err
    assert cli(capsys, "setup", "--undo")[0] == 0
    assert state(isolated_home) == originals
