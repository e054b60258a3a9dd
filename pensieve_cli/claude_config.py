"""Read, merge and write Claude Code's config files (and Pensieve's config.toml) safely, with undo.

Every write is read → validate → merge → temp file in the same folder → fsync → re-check → atomic
rename. The re-check (size, mtime, content hash) catches another program writing the file meanwhile;
the merge is then redone on its new content, so that program's change is kept. Before a file is first
replaced, its exact bytes are copied under ``backups_dir/<timestamp>/`` and listed in that folder's
``journal.json``, which is what ``undo`` replays: byte-for-byte restores, and deletion of files the
run created. A run that fails part way is rolled back the same way at once; one killed part way is
undone together with the run that finished its work. Pure functions do the merging;
:class:`ConfigWriter` does the file system work.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import glob
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BOM = b"\xef\xbb\xbf"
NEW_FILE_MODE = 0o600  # the files hold the API token
JOURNAL = "journal.json"
RETRIES = 3
STALE_TEMP_S = 300  # a temp file this old beside a target is left over from a killed run
TEMP_SUFFIX = ".pensieve-tmp"
INCOMPLETE = ("applying", "failed")  # journal statuses of a run that stopped part way

Transform = Callable[[bytes | None], bytes | None]


class ConfigFileError(Exception):
    """A file that cannot be read, merged or written; the message names it and says what to do."""


class NothingToUndo(ConfigFileError):
    pass


def display(path: Path) -> str:
    """The path as the person knows it: ``~/...`` under their home folder."""
    home = str(Path.home())
    text = str(path)
    if home not in ("", "/") and (text == home or text.startswith(home + os.sep)):
        return "~" + text[len(home):]
    return text


@dataclass(frozen=True)
class ClaudePaths:
    """Where Claude Code reads its config: ``$CLAUDE_CONFIG_DIR`` when set, else the home folder."""

    claude_json: Path
    settings_json: Path

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None) -> ClaudePaths:
        env = os.environ if environ is None else environ
        config_dir = env.get("CLAUDE_CONFIG_DIR", "")
        if config_dir:
            base = Path(config_dir).expanduser()
            return cls(base / ".claude.json", base / "settings.json")
        home = Path(env["HOME"]) if env.get("HOME") else Path.home()
        return cls(home / ".claude.json", home / ".claude" / "settings.json")


# -- JSON: parse and render keeping the file's own style ---------------------------------------------

@dataclass(frozen=True)
class JsonStyle:
    bom: bool = False
    indent: str | None = "  "  # None: one line
    compact: bool = False  # one line without spaces after ':' and ','
    trailing_newline: bool = True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes | None, path: Path) -> tuple[dict[str, Any], JsonStyle]:
    """The file's top-level object and style; a missing or blank file is ``{}``."""
    if raw is None:
        return {}, JsonStyle()
    bom = raw.startswith(BOM)
    try:
        text = raw[len(BOM):].decode("utf-8") if bom else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            f"{display(path)} is not UTF-8 text (byte {exc.start}); fix or move it, then run again — nothing was changed"
        ) from None
    if not text.strip():
        return {}, JsonStyle(bom=bom)
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(
            f"{display(path)} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix or move it, then run again — nothing was changed"
        ) from None
    except ValueError as exc:
        raise ConfigFileError(f"{display(path)}: {exc}; fix it, then run again — nothing was changed") from None
    if not isinstance(data, dict):
        raise ConfigFileError(
            f"{display(path)} must hold a JSON object ({{...}}), found {type(data).__name__}; "
            "fix or move it, then run again — nothing was changed"
        )
    return data, _style_of(text, bom)


def _style_of(text: str, bom: bool) -> JsonStyle:
    body = text.strip()
    trailing = text.endswith("\n")
    if "\n" not in body:
        return JsonStyle(bom=bom, indent=None, compact='": ' not in body and '", ' not in body,
                         trailing_newline=trailing)
    match = re.search(r"\n([ \t]+)\S", body)
    return JsonStyle(bom=bom, indent=match.group(1) if match else "  ", trailing_newline=trailing)


def render_json(data: Mapping[str, Any], style: JsonStyle) -> bytes:
    """JSON as Claude Code writes it (``JSON.stringify(x, null, 2)``), in the file's own style."""
    if style.indent is None:
        separators = (",", ":") if style.compact else (", ", ": ")
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=separators)
    else:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, indent=style.indent)
    if style.trailing_newline:
        text += "\n"
    return (BOM if style.bom else b"") + text.encode("utf-8")


def with_onboarding(data: Mapping[str, Any]) -> dict[str, Any]:
    """``~/.claude.json`` with onboarding marked done; every other key kept in place."""
    merged = dict(data)
    merged["hasCompletedOnboarding"] = True
    return merged


def with_env(data: Mapping[str, Any], env: Mapping[str, str], path: Path) -> dict[str, Any]:
    """``settings.json`` with ``env`` updated; other keys in ``env`` and in the file kept in place."""
    merged = dict(data)
    current = merged.get("env", {})
    if not isinstance(current, dict):
        raise ConfigFileError(
            f'{display(path)}: "env" must be a JSON object, found {type(current).__name__}; '
            "fix it, then run again — nothing was changed"
        )
    merged["env"] = {**current, **env}
    return merged


def json_transform(path: Path, merge: Callable[[dict[str, Any]], dict[str, Any]]) -> Transform:
    """A transform that parses, merges and re-renders; unchanged data returns the input bytes."""

    def transform(raw: bytes | None) -> bytes | None:
        data, style = parse_json(raw, path)
        merged = merge(data)
        if raw is not None and merged == data and list(merged) == list(data):
            return raw
        return render_json(merged, style)

    return transform


# -- TOML (Pensieve's own config.toml) ---------------------------------------------------------------

def toml_transform(path: Path, values: Mapping[str, Any]) -> Transform:
    """Set dotted keys (``tiers.opus``) in a TOML file, keeping every other key."""

    def transform(raw: bytes | None) -> bytes | None:
        data: dict[str, Any] = {}
        if raw is not None:
            try:
                data = tomllib.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigFileError(
                    f"{display(path)} is not valid TOML ({exc}); fix or move it, then run again — nothing was changed"
                ) from None
        merged = copy.deepcopy(data)
        for dotted, value in values.items():
            table = merged
            *parents, leaf = dotted.split(".")
            for name in parents:
                child = table.setdefault(name, {})
                if not isinstance(child, dict):
                    raise ConfigFileError(f"{display(path)}: {name} must be a table; fix it, then run again")
                table = child
            table[leaf] = value
        if raw is not None and merged == data:
            return raw
        return tomli_w.dumps(merged).encode("utf-8")

    return transform


# -- File system -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Edit:
    """One file to change: ``transform`` maps its current bytes (None: missing) to the new bytes."""

    path: Path
    transform: Transform
    mode: int | None = None  # force this mode (config.toml: 0600); else keep the file's own


@dataclass(frozen=True)
class Snapshot:
    data: bytes | None
    mode: int | None
    owner: tuple[int, int] | None
    stamp: tuple[int, int, int] | None  # (mtime_ns, size, inode)

    @property
    def digest(self) -> str | None:
        return None if self.data is None else hashlib.sha256(self.data).hexdigest()


def target_of(path: Path) -> Path:
    """Where a write to ``path`` really lands: symlinks are followed so the link stays a link."""
    return Path(os.path.realpath(path))


def snapshot(target: Path) -> Snapshot:
    try:
        with open(target, "rb") as handle:
            st = os.fstat(handle.fileno())
            data = handle.read()
    except FileNotFoundError:
        return Snapshot(None, None, None, None)
    except IsADirectoryError:
        raise ConfigFileError(f"{display(target)} is a folder, not a file; move it away and run again") from None
    except PermissionError:
        raise ConfigFileError(
            f"cannot read {display(target)} (permission denied); fix its permissions and run again — nothing was changed"
        ) from None
    return Snapshot(data, st.st_mode & 0o7777, (st.st_uid, st.st_gid), (st.st_mtime_ns, st.st_size, st.st_ino))


def check_writable(path: Path, target: Path, snap: Snapshot) -> None:
    """Refuse read-only files (by mode bits too: root may write anything, but the owner said no)."""
    if snap.mode is not None and (not snap.mode & 0o222 or not os.access(target, os.W_OK)):
        raise ConfigFileError(
            f"{display(path)} is read-only; make it writable (chmod u+w {display(target)}) "
            "or edit it by hand, then run again — nothing was changed"
        )
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigFileError(
            f"cannot write in {display(folder)} (permission denied); fix its permissions and run again — "
            "nothing was changed"
        )


def _write_temp(target: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> Path:
    """A fully written, fsynced temp file beside ``target`` with the final mode (and owner, as root)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if owner is not None and hasattr(os, "geteuid") and os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.fchown(handle.fileno(), *owner)
            os.fsync(handle.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def write_error(path: Path, exc: OSError) -> str:
    """One line for a failed write; a full disk says so plainly."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {display(path)}: the disk is full ({exc.strerror}); free some space and run again"
    return f"cannot write {display(path)}: {exc.strerror or exc}"


def remove_stale_temps(target: Path, max_age_s: float = STALE_TEMP_S) -> None:
    """Delete temp files beside ``target`` left by a run that was killed before its rename.

    Only old ones: a young one may belong to a run going on right now.
    """
    cutoff = time.time() - max_age_s
    with contextlib.suppress(OSError):
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if leftover.is_file() and not leftover.is_symlink() and leftover.lstat().st_mtime < cutoff:
                    leftover.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_parents(folder: Path) -> list[Path]:
    """Create missing folders (0700), returning the ones created, outermost first."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(mode=0o700)
    return list(reversed(missing))


def atomic_write(target: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    _make_parents(target.parent)
    tmp = _write_temp(target, data, mode, owner)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


# -- Plans, runs and the journal ---------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """What a write does (or would do) to one file: bytes before (None: missing) and after."""

    path: Path
    target: Path
    before: bytes | None
    after: bytes | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True)
class Restored:
    path: Path
    action: str  # "restored" | "removed" | "unchanged"
    saved_copy: Path | None  # the file's newer content, kept when it had changed since setup


@dataclass
class _Run:
    """One journaled run: a timestamped folder with the backups and ``journal.json``."""

    folder: Path
    command: str
    files: list[dict[str, Any]] = field(default_factory=list)

    def record(self, edit: Edit, target: Path, snap: Snapshot, after: bytes, created_dirs: Sequence[Path]) -> None:
        backup = None
        if snap.data is not None:
            backup = f"{len(self.files)}-{target.name.lstrip('.') or 'file'}"
            atomic_write(self.folder / backup, snap.data, 0o600)
        self.files.append({
            "path": str(edit.path), "target": str(target), "existed": snap.data is not None,
            "mode": snap.mode, "backup": backup, "sha256_before": snap.digest,
            "sha256_after": hashlib.sha256(after).hexdigest(),
            "created_dirs": [str(d) for d in created_dirs],
        })
        self.save("applying")

    def save(self, status: str, **extra: Any) -> None:
        journal = {"version": 1, "command": self.command, "created_at": self.folder.name.split("-")[0],
                   "status": status, "files": self.files, **extra}
        atomic_write(self.folder / JOURNAL, (json.dumps(journal, indent=2) + "\n").encode("utf-8"), 0o600)


class ConfigWriter:
    """Plans, applies and undoes edits; every applied run is journaled under ``backups_dir``."""

    def __init__(self, backups_dir: Path, command: str = "setup", retries: int = RETRIES) -> None:
        self.backups_dir = backups_dir
        self.command = command
        self.retries = retries

    # -- planning: read and validate everything, write nothing --------------------------------------
    def plan(self, edits: Sequence[Edit]) -> list[Change]:
        changes = []
        for edit in edits:
            target = target_of(edit.path)
            snap = snapshot(target)
            after = edit.transform(snap.data)
            change = Change(edit.path, target, snap.data, after)
            if change.changed:
                check_writable(edit.path, target, snap)
            changes.append(change)
        return changes

    # -- applying ------------------------------------------------------------------------------------
    def apply(self, edits: Sequence[Edit]) -> list[Change]:
        """Write every edit that changes something; returns the changes made (empty: nothing to do).

        All or nothing: when a write fails part way (a full disk, a file that keeps changing), the
        files already written are put back as they were; only if that fails too does the error
        point at ``--undo``.
        """
        self.plan(edits)  # every file valid and writable before the first write
        run: _Run | None = None
        made: list[Change] = []
        try:
            for edit in edits:
                change, run = self._apply_one(edit, run)
                if change is not None:
                    made.append(change)
        except ConfigFileError as exc:
            if run is None:
                raise
            raise ConfigFileError(self._roll_back(run, made, exc)) from None
        if run is not None:
            with contextlib.suppress(OSError):  # every file is written; only the journal's status is stale
                run.save("done")
        return made

    def _roll_back(self, run: _Run, made: Sequence[Change], exc: ConfigFileError) -> str:
        """Put the files of a failed run back; the error message to show."""
        with contextlib.suppress(OSError):
            run.save("failed")
        done = ", ".join(display(c.path) for c in made)
        try:
            self._undo_runs([(run.folder, {"command": run.command, "status": "failed", "files": run.files})])
        except (OSError, ConfigFileError):
            if made:
                return f"{exc}; already updated: {done} (`pensieve {self.command} --undo` restores them)"
        if not made:
            return str(exc)
        return f"{exc}; {done} {'was' if len(made) == 1 else 'were'} put back as before, so nothing was changed"

    def _apply_one(self, edit: Edit, run: _Run | None) -> tuple[Change | None, _Run | None]:
        try:
            return self._write_one(edit, run)
        except OSError as exc:
            raise ConfigFileError(write_error(edit.path, exc)) from None

    def _write_one(self, edit: Edit, run: _Run | None) -> tuple[Change | None, _Run | None]:
        target = target_of(edit.path)
        created_dirs: list[Path] = []
        for _attempt in range(self.retries):
            snap = snapshot(target)
            after = edit.transform(snap.data)
            if after is None or after == snap.data:
                return None, run
            check_writable(edit.path, target, snap)
            created_dirs += _make_parents(target.parent)
            remove_stale_temps(target)
            mode = edit.mode if edit.mode is not None else (snap.mode if snap.mode is not None else NEW_FILE_MODE)
            tmp = _write_temp(target, after, mode, snap.owner)
            try:
                if snapshot(target) != snap:
                    continue  # someone else wrote it meanwhile: merge again on their version
                run = run or self._new_run()
                run.record(edit, target, snap, after, created_dirs)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(target.parent)
            return Change(edit.path, target, snap.data, after), run
        for created in reversed(created_dirs):
            with contextlib.suppress(OSError):
                created.rmdir()
        raise ConfigFileError(
            f"{display(edit.path)} kept changing while Pensieve was writing it (another program is writing it); "
            f"close that program and run again — {display(edit.path)} was not changed"
        )

    def _new_run(self) -> _Run:
        self.backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        for suffix in ("", *(f"-{n}" for n in range(2, 100))):
            folder = self.backups_dir / f"{stamp}{suffix}-{self.command}"
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError:
                continue
            return _Run(folder, self.command)
        raise ConfigFileError(f"cannot create a backup folder in {display(self.backups_dir)}")  # pragma: no cover

    # -- undo ----------------------------------------------------------------------------------------
    def runs(self) -> list[tuple[Path, dict[str, Any]]]:
        """Journaled runs, newest first, that have not been undone."""
        found = []
        if self.backups_dir.is_dir():
            for folder in sorted(self.backups_dir.iterdir(), reverse=True):
                try:
                    journal = json.loads((folder / JOURNAL).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(journal, dict) and not journal.get("undone_at") and journal.get("files"):
                    found.append((folder, journal))
        return found

    def undo(self) -> list[Restored]:
        """Put back every file of the newest run exactly as it was; remove the files it created.

        Runs just before it that stopped part way (killed, or failed and not rolled back) are undone
        too: the newest run finished their work, so "as before setup" means before them as well.
        """
        runs = self.runs()
        if not runs:
            raise NothingToUndo(f"nothing to undo: no changes by Pensieve are recorded in {display(self.backups_dir)}")
        chain = [runs[0]]
        for older in runs[1:]:
            if older[1].get("status") not in INCOMPLETE:
                break
            chain.append(older)
        return self._undo_runs(chain)

    def _undo_runs(self, chain: Sequence[tuple[Path, dict[str, Any]]]) -> list[Restored]:
        """Undo runs, newest first; every file is checked before the first write."""
        for folder, journal in chain:
            for entry in journal["files"]:
                target = Path(entry["target"])
                check_writable(Path(entry["path"]), target, snapshot(target))
                if entry["existed"] and not (folder / entry["backup"]).is_file():
                    raise ConfigFileError(
                        f"the backup of {display(Path(entry['path']))} is missing from {display(folder)}; cannot undo"
                    )
        results: dict[Path, Restored] = {}
        order: list[Path] = []
        for folder, journal in chain:
            entries = list(reversed(journal["files"]))
            for entry in entries:
                item = self._restore(folder, entry)
                if item.path not in results:
                    order.append(item.path)
                previous = results.get(item.path)
                if previous is None or item.action != "unchanged":
                    saved = item.saved_copy or (previous.saved_copy if previous else None)
                    results[item.path] = Restored(item.path, item.action, saved)
            for entry in entries:
                for created in reversed(entry.get("created_dirs", [])):
                    with contextlib.suppress(OSError):
                        Path(created).rmdir()  # only when empty
            run = _Run(folder, journal.get("command", self.command), journal["files"])
            run.save(journal.get("status", "done"), undone_at=datetime.now(timezone.utc).isoformat())
        return [results[path] for path in reversed(order)]

    def _restore(self, folder: Path, entry: dict[str, Any]) -> Restored:
        path, target = Path(entry["path"]), Path(entry["target"])
        snap = snapshot(target)
        saved = None
        if snap.data is not None and snap.digest not in (entry["sha256_after"], entry["sha256_before"]):
            saved = folder / f"{Path(entry['backup'] or target.name).name}.changed-after-setup"
            atomic_write(saved, snap.data, 0o600)
        if entry["existed"]:
            original = (folder / entry["backup"]).read_bytes()
            if snap.data == original and snap.mode == entry["mode"]:
                return Restored(path, "unchanged", None)
            atomic_write(target, original, entry["mode"] if entry["mode"] is not None else NEW_FILE_MODE, snap.owner)
            return Restored(path, "restored", saved)
        if snap.data is None:
            return Restored(path, "unchanged", None)
        target.unlink()
        _fsync_dir(target.parent)
        return Restored(path, "removed", saved)
