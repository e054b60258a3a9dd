"""The CLI commands that load a model import llama_cpp before numpy (a CUDA build of llama-cpp-python
crashed loading a model the other way round); the others do not pay for importing llama_cpp.
The real ``pensieve serve`` runs in a subprocess; a sitecustomize only watches the imports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pensieve_server.engine.load_order import load_llama_cpp_first, loads_models

REPO = Path(__file__).resolve().parents[2]
WATCHER = '''
import os, sys
class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name in ("numpy", "llama_cpp"):
            with open(os.environ["IMPORT_ORDER_FILE"], "a") as f:
                f.write(name + "\\n")
        return None
sys.meta_path.insert(0, _Watch())
'''


def first_imports(tmp_path: Path, args: list[str], until: str | None = None) -> list[str]:
    """numpy and llama_cpp in the order the CLI first imported them, running ``pensieve args``
    until it exits or prints ``until`` (then it is stopped)."""
    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "sitecustomize.py").write_text(WATCHER)
    order = tmp_path / "order"
    env = {**os.environ, "IMPORT_ORDER_FILE": str(order), "PENSIEVE_HOME": str(tmp_path / "home"),
           "PENSIEVE_AUTH_TOKEN": "t" * 32,
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "watch"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "pensieve_cli.main", *args], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if until is None:
            process.wait(timeout=120)
        else:
            deadline = time.monotonic() + 300
            for line in process.stderr:
                if until in line or time.monotonic() > deadline:
                    break
            assert process.poll() is None, "the server exited before it served"
    finally:
        process.terminate()
        process.wait(timeout=60)
    names = order.read_text().split() if order.exists() else []
    return list(dict.fromkeys(names))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_imports_llama_cpp_before_numpy(tmp_path: Path) -> None:
    order = first_imports(tmp_path, ["serve", "--engine", "llamacpp", "--host", "127.0.0.1",
                                     "--port", str(free_port())], until="Pensieve serving")
    assert order[:2] == ["llama_cpp", "numpy"]


def test_other_commands_do_not_import_llama_cpp(tmp_path: Path) -> None:
    assert "llama_cpp" not in first_imports(tmp_path, ["--version"])


@pytest.mark.parametrize(("argv", "loads"), [(["serve"], True), (["-v", "serve", "--engine", "mlx"], True),
                                             (["doctor", "--json"], True), (["status"], False),
                                             (["config", "list"], False), ([], False)])
def test_which_commands_load_models(argv: list[str], loads: bool) -> None:
    assert loads_models(argv) is loads


def test_in_process_answer_says_whether_llama_cpp_is_loaded() -> None:
    import llama_cpp  # noqa: F401 - a required part on this machine

    assert load_llama_cpp_first() is True
