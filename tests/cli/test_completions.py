"""Shell completions: the committed scripts match the CLI, and real bash, zsh and fish complete with them."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pensieve_cli import completions
from pensieve_cli.main import main
from pensieve_server.settings import Paths

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "completions"
BASH = SCRIPTS / "pensieve.bash"
ZSH = SCRIPTS / "_pensieve"
FISH = SCRIPTS / "pensieve.fish"
FAKE_MODEL = "my-coder-7b"


def install_fake_model(pensieve_home: Path, name: str = FAKE_MODEL) -> None:
    folder = Paths.resolve({"PENSIEVE_HOME": str(pensieve_home)}).models_dir / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": name, "format": "gguf"}))


def shell_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PENSIEVE_", "XDG_"))}
    env.update(extra)
    return env


# -- the committed scripts are the generated ones ---------------------------------------------------

def test_committed_scripts_match_a_fresh_generation() -> None:
    outdated = completions.stale(SCRIPTS)
    assert not outdated, (f"{', '.join(outdated)} differ from the CLI's parser; "
                          f"run {completions.REGENERATE} and commit the result")


def test_every_command_and_option_is_in_every_committed_script() -> None:
    """Named misses, so a stale script says what it lacks (the test above says how to fix it)."""
    spec = completions.build_spec()
    scripts = {path.name: path.read_text(encoding="utf-8") for path in (BASH, ZSH, FISH)}
    missing = []
    for command in spec.root.walk():
        names = [command.words[-1]] if command.words else []
        flags = [flag.lstrip("-") for option in command.options for flag in option.flags]
        for name, text in scripts.items():
            missing += [f"{name}: {command.path or 'pensieve'} {word}" for word in names + flags if word not in text]
    assert not missing, f"not in the committed scripts: {missing}; run {completions.REGENERATE}"


def test_the_tree_has_every_registered_command_and_hides_suppressed_ones() -> None:
    spec = completions.build_spec()
    top = {command.words[-1] for command in spec.root.subcommands}
    assert {"setup", "serve", "start", "stop", "status", "doctor", "config", "completions"} <= top
    config = next(c for c in spec.root.subcommands if c.words == ("config",))
    assert {"path", "get", "set", "unset", "list"} <= {c.words[-1] for c in config.subcommands}

    parser = argparse.ArgumentParser(prog="pensieve")
    subs = parser.add_subparsers()
    shown = subs.add_parser("shown", help="visible")
    shown.add_argument("--secret", help=argparse.SUPPRESS)
    shown.add_argument("--engine", choices=("a", "b"))
    subs.add_parser("hidden")  # no help=: argparse lists it nowhere, and neither do we
    tree = completions.describe(parser)
    assert [c.words for c in tree.subcommands] == [("shown",)]
    options = {flag: option for option in tree.subcommands[0].options for flag in option.flags}
    assert "--secret" not in options and options["--engine"].value == completions.Value("words", ("a", "b"))


def test_a_names_flag_on_models_list_is_used_when_it_exists() -> None:
    parser = argparse.ArgumentParser(prog="pensieve")
    models = parser.add_subparsers().add_parser("models", help="m").add_subparsers()
    models.add_parser("list", help="l").add_argument("--names", action="store_true", help=argparse.SUPPRESS)
    spec = completions.build_spec(parser)
    assert spec.names_command
    for shell in completions.SHELLS:
        assert "pensieve models list --names" in completions.generate(shell, spec)
    assert "--names" not in completions.generate("bash", completions.build_spec())  # not there today


def test_python_dash_m_check_and_write(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    assert completions.main(["--check", str(SCRIPTS)]) == 0
    assert completions.main(["--check", str(folder)]) == 1
    assert completions.main(["--write", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(completions.FILENAMES.values())
    assert completions.main(["--check", str(folder)]) == 0


# -- pensieve completions --------------------------------------------------------------------------

def test_completions_command_prints_each_script(capsys: pytest.CaptureFixture[str]) -> None:
    for shell in completions.SHELLS:
        assert main(["completions", shell]) == 0
        assert capsys.readouterr().out == completions.generate(shell)


def test_completions_command_uses_shell_from_env(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHELL", "/usr/bin/zsh")
    assert main(["completions"]) == 0
    assert capsys.readouterr().out.startswith("#compdef pensieve")
    monkeypatch.setenv("SHELL", "/bin/tcsh")
    assert main(["completions"]) == 2
    assert "pensieve completions bash|zsh|fish" in capsys.readouterr().err


def test_completions_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completions", "fish", "--write", str(tmp_path / "fish")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "fish" / "pensieve.fish").read_text() == completions.generate("fish")
    assert "wrote" in out and "To enable it" in out
    assert main(["-q", "completions", "--write", str(tmp_path / "all")]) == 0
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(completions.FILENAMES.values())


# -- bash ------------------------------------------------------------------------------------------

def bash_complete(line: str, env: dict[str, str] | None = None, script: Path = BASH) -> list[str]:
    """What TAB offers at the end of ``line`` (a trailing space starts a new, empty word)."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    array = " ".join(f"'{word}'" for word in words)
    code = (f"source '{script}' && COMP_WORDS=({array}) && COMP_CWORD={len(words) - 1} && "
            "COMP_LINE=\"${COMP_WORDS[*]}\" && _pensieve && printf '%s\\n' \"${COMPREPLY[@]}\"")
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True, text=True,
                          env=env or shell_env(), timeout=10)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return [word for word in proc.stdout.splitlines() if word]


def test_bash_scripts_parse() -> None:
    subprocess.run(["bash", "-n", str(BASH)], check=True, timeout=10)


def test_bash_completes_commands_and_subcommands() -> None:
    assert bash_complete("pensieve mo") == ["models"]
    assert set(bash_complete("pensieve st")) == {"start", "stop", "status"}
    assert bash_complete("pensieve models l") == ["list"]
    assert bash_complete("pensieve -q config se") == ["set"]
    assert "completions" in bash_complete("pensieve ")


def test_bash_completes_options_and_choices() -> None:
    assert bash_complete("pensieve doctor --no") == ["--no-load"]
    assert "--model" in bash_complete("pensieve serve --")
    assert bash_complete("pensieve serve --engine ll") == ["llamacpp"]
    assert bash_complete("pensieve serve --port 8080 --log-level d") == ["debug"]
    assert bash_complete("pensieve completions f") == ["fish"]
    assert bash_complete("pensieve config get tiers.h") == ["tiers.haiku"]
    assert bash_complete("pensieve config set engine up") == ["upstream"]
    assert bash_complete("pensieve config set port ") == []  # a number: nothing to offer
    assert "--json" in bash_complete("pensieve status ")  # nothing positional: the options
    assert bash_complete("pensieve models map h") == ["haiku"]


def test_bash_completes_the_embedded_model(tmp_path: Path) -> None:
    env = shell_env(HOME=str(tmp_path), PENSIEVE_HOME=str(tmp_path / "empty"))
    assert bash_complete("pensieve serve --model sm", env) == ["smollm2-135m"]
    assert bash_complete("pensieve serve --model=sm", env) == ["smollm2-135m"]  # bash splits at '='
    assert bash_complete("pensieve models info ", env) == ["smollm2-135m"]


def test_bash_completes_installed_models_from_pensieve_home(tmp_path: Path) -> None:
    home = tmp_path / "a folder with spaces"
    install_fake_model(home)
    env = shell_env(HOME=str(tmp_path), PENSIEVE_HOME=str(home))
    assert sorted(bash_complete("pensieve serve --model ", env)) == sorted(["smollm2-135m", FAKE_MODEL])
    assert bash_complete("pensieve start --model my", env) == [FAKE_MODEL]
    assert bash_complete("pensieve models rm my", env) == [FAKE_MODEL]
    assert bash_complete("pensieve models map haiku my", env) == [FAKE_MODEL]
    assert bash_complete("pensieve config set tiers.opus my", env) == [FAKE_MODEL]
    assert "qwen2.5-coder-7b" in bash_complete("pensieve setup --model qwen", env)  # catalogue too


@pytest.mark.skipif(sys.platform != "linux", reason="the XDG data folder is where Linux keeps models")
def test_bash_finds_models_where_pensieve_keeps_them_without_pensieve_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's own idea of the data folder agrees with Paths.resolve() (platformdirs)."""
    monkeypatch.delenv("PENSIEVE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for xdg in (None, tmp_path / "xdg"):
        if xdg:
            monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
        else:
            monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        models_dir = Paths.resolve().models_dir  # platformdirs reads os.environ
        name = f"model-{'xdg' if xdg else 'home'}"
        (models_dir / name).mkdir(parents=True)
        (models_dir / name / "manifest.json").write_text("{}")
        env = shell_env(HOME=str(tmp_path / "home"), **({"XDG_DATA_HOME": str(xdg)} if xdg else {}))
        assert bash_complete("pensieve serve --model model-", env) == [name]


def test_bash_completes_paths_for_path_values(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    (folder / "outdir").mkdir(parents=True)
    (folder / "weights.gguf").write_text("")
    env = shell_env(HOME=str(tmp_path))
    assert bash_complete(f"pensieve models import {folder}/wei", env) == [f"{folder}/weights.gguf"]
    assert bash_complete(f"pensieve completions --write {folder}/", env) == [f"{folder}/outdir"]


# -- fish ------------------------------------------------------------------------------------------

needs_fish = pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")


def fish_complete(line: str, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(["fish", "--no-config", "-c", f"source {FISH}; complete -C{json.dumps(line)}"],
                          capture_output=True, text=True, env=env, timeout=20)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return [row.split("\t", 1)[0] for row in proc.stdout.splitlines() if row]


@needs_fish
def test_fish_script_parses() -> None:
    subprocess.run(["fish", "--no-config", "-n", str(FISH)], check=True, timeout=20)


@needs_fish
def test_fish_completes(tmp_path: Path) -> None:
    install_fake_model(tmp_path / "pensieve")
    env = shell_env(HOME=str(tmp_path), PENSIEVE_HOME=str(tmp_path / "pensieve"))
    assert fish_complete("pensieve mo", env) == ["models"]
    assert fish_complete("pensieve models l", env) == ["list"]
    assert fish_complete("pensieve serve --model sm", env) == ["smollm2-135m"]
    assert fish_complete("pensieve serve --model my", env) == [FAKE_MODEL]
    assert fish_complete("pensieve models rm my", env) == [FAKE_MODEL]
    assert fish_complete("pensieve serve --engine ll", env) == ["llamacpp"]
    assert fish_complete("pensieve config set engine up", env) == ["upstream"]
    assert "--no-load" in fish_complete("pensieve doctor --", env)


# -- zsh: a real interactive shell in a terminal, TAB pressed -------------------------------------

needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")


class Zsh:
    """``zsh -f -i`` with compinit and our script autoloaded from $fpath (or sourced after compinit);
    ``tab(line)`` returns the line as TAB left it."""

    def __init__(self, env: dict[str, str], tmp: Path, how: str) -> None:
        import pexpect

        self.out, self.how = tmp / "buffer.txt", how
        self.child = pexpect.spawn("zsh", ["-f", "-i"], env={**env, "TERM": "xterm"}, encoding="utf-8",
                                   timeout=30, dimensions=(40, 200))
        # A widget bound to ^X^D writes the line being edited to a file, then clears it: no command runs.
        load = f"fpath=({SCRIPTS} $fpath); autoload -U compinit; compinit -u -D" if how == "fpath" else \
            f"autoload -U compinit; compinit -u -D; source {ZSH}"
        self.child.sendline(
            f"PS1='%% '; {load}; "
            f"dump() {{ print -r -- \"$BUFFER\" > {self.out}; BUFFER=''; }}; zle -N dump; bindkey '^X^D' dump; "
            "echo READY")
        self.child.expect("READY\r\n")

    def tab(self, line: str) -> str:
        self.out.unlink(missing_ok=True)
        self.child.send(line + "\t\x18\x04")  # keys are handled in order: TAB completes before ^X^D
        deadline = time.monotonic() + 90  # a loaded 2-core machine can take tens of seconds per TAB
        while not self.out.exists() or not self.out.read_text().endswith("\n"):
            assert time.monotonic() < deadline, f"zsh did not answer: {self.child.before!r}"
            time.sleep(0.05)
        return self.out.read_text().rstrip("\n")

    def close(self) -> None:
        self.child.sendline("exit")
        self.child.close(force=True)


@pytest.fixture(params=["fpath", "source"])
def zsh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Zsh]:
    install_fake_model(tmp_path / "pensieve")
    shell = Zsh(shell_env(HOME=str(tmp_path), PENSIEVE_HOME=str(tmp_path / "pensieve")), tmp_path, request.param)
    try:
        yield shell
    finally:
        shell.close()


@needs_zsh
def test_zsh_script_parses() -> None:
    subprocess.run(["zsh", "-n", str(ZSH)], check=True, timeout=10)


@needs_zsh
def test_zsh_completes(zsh: Zsh) -> None:
    assert zsh.tab("pensieve mo") == "pensieve models "
    assert zsh.tab("pensieve models li") == "pensieve models list "
    assert zsh.tab("pensieve serve --model sm") == "pensieve serve --model smollm2-135m "
    assert zsh.tab("pensieve serve --model my") == f"pensieve serve --model {FAKE_MODEL} "
    assert zsh.tab("pensieve serve --model=my") == f"pensieve serve --model={FAKE_MODEL} "
    assert zsh.tab("pensieve doctor --no-l") == "pensieve doctor --no-load "
    assert zsh.tab("pensieve serve --engine llam") == "pensieve serve --engine llamacpp "
    assert zsh.tab("pensieve config set engine ups") == "pensieve config set engine upstream "
    if zsh.how == "source":
        return
    assert zsh.tab("pensieve models rm my") == f"pensieve models rm {FAKE_MODEL} "
    assert zsh.tab("pensieve status --j") == "pensieve status --json "
