"""A small stand-in for the Hugging Face Hub: a real HTTP server (Flask on Waitress, loopback, a thread).

It serves what huggingface_hub 2.4.0 calls to pull a model, with the headers it needs:

* ``GET /api/models/<owner>/<name>[/revision/<rev>]?blobs=true``: ``sha`` and ``siblings`` with size,
  ``blobId`` and, for LFS files, ``lfs: {size, sha256, pointerSize}``;
* ``HEAD|GET /<owner>/<name>/resolve/<rev>/<path>``: small files answered directly (ETag = git blob id,
  X-Repo-Commit, Content-Length); LFS files redirected (302) to a "CDN" on another origin
  (``localhost`` instead of ``127.0.0.1``) with X-Linked-Etag / X-Linked-Size / X-Repo-Commit, as the Hub does;
* ``GET /cdn/<sha256>``: the bytes, with ``Range`` support (206 + Content-Range) for resumed downloads.

Fault switches: ``drop`` (close the connection after N bytes of a file, a number of times), ``corrupt``
(serve different bytes of the same size), ``fail`` (401 / 404 for every request about a repo) and gated
repos. Every request is logged in ``requests`` so tests can see Range headers and what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, request
from waitress.server import create_server

from pensieve_server.runner import run_in_thread, stop_server

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


@dataclass
class StandinRepo:
    repo_id: str
    files: dict[str, bytes]
    commit: str = ""
    gated: bool = False

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1(self.repo_id.encode())
            for path in sorted(self.files):
                digest.update(path.encode() + self.files[path])
            self.commit = digest.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def sibling(self, path: str) -> dict[str, Any]:
        data = self.files[path]
        if not self.is_lfs(path):
            return {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        pointer = lfs_pointer(data)
        return {"rfilename": path, "size": len(data), "blobId": git_blob_id(pointer),
                "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": len(pointer)}}


@dataclass
class Drop:
    """Close the connection once a response has sent the file up to byte ``after``; ``times`` responses."""

    after: int
    times: int = 1


@dataclass
class StandinHub:
    repos: dict[str, StandinRepo] = field(default_factory=dict)
    drops: dict[str, Drop] = field(default_factory=dict)  # repo path of the file -> drop
    corrupt: set[str] = field(default_factory=set)  # repo paths served with wrong bytes
    fail: dict[str, int] = field(default_factory=dict)  # repo id -> 401 | 404 | 403 | 500
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    authorized: list[tuple[str, str]] = field(default_factory=list)  # (method, path) sent with a token
    base_url: str = ""
    cdn_host: str = "localhost"
    _server: Any = None
    _thread: threading.Thread | None = None

    def add(self, repo: StandinRepo) -> StandinRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def data_requests(self, path: str | None = None) -> list[tuple[str, str, str | None]]:
        """GETs that carried file bytes (CDN or resolve), optionally for one file name."""
        hits = [r for r in self.requests if r[0] == "GET" and ("/cdn/" in r[1] or "/resolve/" in r[1])]
        if path is None:
            return hits
        shas = {hashlib.sha256(repo.files[path]).hexdigest() for repo in self.repos.values() if path in repo.files}
        return [r for r in hits if r[1].endswith("/" + path) or r[1].rsplit("/", 1)[-1] in shas]

    # -- the app ---------------------------------------------------------------------------------------
    def app(self) -> Flask:
        app = Flask("standin_hub")

        @app.before_request
        def log_request() -> None:
            self.requests.append((request.method, request.path, request.headers.get("Range")))
            if request.headers.get("Authorization"):
                self.authorized.append((request.method, request.path))

        @app.get("/api/models/<owner>/<name>")
        @app.get("/api/models/<owner>/<name>/revision/<path:rev>")
        def model_info(owner: str, name: str, rev: str = "main") -> Response:
            repo = self._repo(f"{owner}/{name}", rev)
            return jsonify({
                "_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id, "author": owner,
                "sha": repo.commit, "private": False, "disabled": False,
                "gated": "manual" if repo.gated else False, "tags": ["mlx"], "downloads": 0, "likes": 0,
                "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
                "siblings": [repo.sibling(p) for p in sorted(repo.files)],
            })

        @app.route("/<owner>/<name>/resolve/<rev>/<path:filename>", methods=["GET", "HEAD"])
        def resolve(owner: str, name: str, rev: str, filename: str) -> Response:
            repo = self._repo(f"{owner}/{name}", rev)
            if repo.gated:
                abort(self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have "
                                  "access to it and be authenticated to access it. Please log in."))
            if filename not in repo.files:
                abort(self._error(404, "EntryNotFound", "Entry not found", repo.commit))
            data = repo.files[filename]
            if repo.is_lfs(filename):
                sha = hashlib.sha256(data).hexdigest()
                port = self.base_url.rsplit(":", 1)[1]
                response = redirect(f"http://{self.cdn_host}:{port}/cdn/{sha}", code=302)
                response.headers.update({
                    "ETag": f'"{git_blob_id(lfs_pointer(data))}"', "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(data)), "X-Repo-Commit": repo.commit,
                })
                return response
            return self._bytes(filename, data, git_blob_id(data), repo.commit)

        @app.get("/cdn/<sha>")
        def cdn(sha: str) -> Response:
            for repo in self.repos.values():
                for path, data in repo.files.items():
                    if hashlib.sha256(data).hexdigest() == sha:
                        return self._bytes(path, data, sha, None)
            abort(404)

        return app

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> Response:
        response = Response(json.dumps({"error": message}), status=status, mimetype="application/json")
        if code:
            response.headers["X-Error-Code"] = code
        response.headers["X-Error-Message"] = message
        if commit:
            response.headers["X-Repo-Commit"] = commit
        return response

    def _repo(self, repo_id: str, rev: str) -> StandinRepo:
        status = self.fail.get(repo_id)
        if status == 401:
            abort(self._error(401, None, "Invalid credentials in Authorization header"))
        if status == 404:
            abort(self._error(404, "RepoNotFound", "Repository not found"))
        if status:
            abort(self._error(status, None, "Something went wrong"))
        repo = self.repos.get(repo_id)
        if repo is None:
            abort(self._error(404, "RepoNotFound", "Repository not found"))
        if rev not in ("main", repo.commit):
            abort(self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}"))
        return repo

    def _bytes(self, path: str, data: bytes, etag: str, commit: str | None) -> Response:
        """The file (or the asked-for range of it), with the drop / corrupt faults applied."""
        if path in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        spec = request.headers.get("Range")
        if spec and spec.startswith("bytes="):
            start = int(spec[6:].split("-", 1)[0] or 0)
            if start >= len(data):
                response = Response(b"", status=416)
                response.headers["Content-Range"] = f"bytes */{len(data)}"
                return response
        body = data[start:]
        headers = {"ETag": f'"{etag}"', "Accept-Ranges": "bytes", "Content-Length": str(len(body)),
                   "Content-Type": "application/octet-stream"}
        if commit:
            headers["X-Repo-Commit"] = commit
        if spec:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if request.method == "HEAD":  # Werkzeug drops the body of a HEAD answer and keeps Content-Length
            return Response(body, status=206 if spec else 200, headers=headers)
        drop = self.drops.get(path)
        if drop is not None and drop.times > 0:
            drop.times -= 1
            cut = max(drop.after - start, 0)

            def truncated() -> Iterator[bytes]:
                # Waitress closes the connection when the body is shorter than its Content-Length.
                yield body[:cut]

            return Response(truncated(), status=206 if spec else 200, headers=headers, direct_passthrough=True)
        return Response(body, status=206 if spec else 200, headers=headers)

    # -- running ---------------------------------------------------------------------------------------
    def start(self) -> StandinHub:
        self._server = create_server(self.app(), host="127.0.0.1", port=0, threads=4, ident="standin-hub")
        self.base_url = f"http://127.0.0.1:{self._server.effective_port}"
        self._thread = run_in_thread(self._server)
        return self

    def stop(self) -> None:
        if self._server is not None:
            stop_server(self._server)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StandinHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- tiny model repos ----------------------------------------------------------------------------------


def safetensors_bytes(size: int = 256) -> bytes:
    """A real safetensors file with one float32 ``size`` x ``size`` tensor (256 KiB by default)."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    return save({"model.embed_tokens.weight": rng.standard_normal((size, size)).astype(np.float32)})


def mlx_repo_files() -> dict[str, bytes]:
    """A small but well-formed MLX model folder: config, weights, tokenizer."""
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256,
              "num_hidden_layers": 1, "max_position_embeddings": 2048, "vocab_size": 256}
    tokenizer = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}
    return {
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"# tiny\nA test model.\n",
        "config.json": json.dumps(config, indent=2).encode(),
        "model.safetensors": safetensors_bytes(),
        "tokenizer.json": json.dumps(tokenizer).encode(),
        "tokenizer_config.json": json.dumps({"eos_token": "b", "bos_token": "a"}).encode(),
    }


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(context_length: int = 2048, architecture: str = "llama", padding: int = 64 * 1024) -> bytes:
    """A GGUF v3 header with a few key/values (a string array among them) and no tensors, padded."""
    kvs = [
        (_gguf_string("general.architecture"), struct.pack("<I", 8) + _gguf_string(architecture)),
        (_gguf_string("general.name"), struct.pack("<I", 8) + _gguf_string("tiny")),
        (_gguf_string("tokenizer.ggml.tokens"),
         struct.pack("<IIQ", 9, 8, 3) + b"".join(_gguf_string(t) for t in ("<s>", "a", "b"))),
        (_gguf_string("tokenizer.ggml.scores"), struct.pack("<IIQ", 9, 6, 3) + struct.pack("<3f", 0, 0, 0)),
        (_gguf_string(f"{architecture}.context_length"), struct.pack("<II", 4, context_length)),
    ]
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(k + v for k, v in kvs)
    return header + bytes(padding)


def gguf_repo_files() -> dict[str, bytes]:
    return {
        "README.md": b"# tiny GGUF\n",
        "tiny-Q8_0.gguf": gguf_bytes(padding=96 * 1024),
        "tiny-Q4_K_M.gguf": gguf_bytes(padding=48 * 1024),
        "mmproj-tiny-f16.gguf": gguf_bytes(padding=1024),
    }
