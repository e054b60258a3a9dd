"""The checks ``pensieve doctor`` runs, each a small function returning a :class:`Check` with a fix.

A check reads what it needs from a :class:`Context` built once (settings, Claude Code's files, the
server's ``/health``), never changes anything, and turns every expected problem into a ``fail`` or
``warn`` line that says what to do, so doctor itself never ends in a traceback.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pensieve_server.settings import Settings
from pensieve_server.units import format_size

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MIN_PYTHON = (3, 10)
MIN_API_TIMEOUT_MS = 3_000_000
GIB = 1024**3
RETRY_HANG = "Claude Code gets 401 and retries silently for minutes, which looks like a hang"


@dataclass
class Check:
    """One line of doctor's report. ``fix`` says what to run or change when it is not ok."""

    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}
        if self.data:
            out["data"] = self.data
        return out


@dataclass
class Context:
    """What every check may look at, gathered once."""

    settings: Settings
    environ: Mapping[str, str]
    health: dict[str, Any] | None  # the Pensieve server answering on the configured port, if any
    load_model: bool = True
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, environ: Mapping[str, str] | None = None, load_model: bool = True) -> Context:
        from pensieve_cli.daemon import health

        env = os.environ if environ is None else environ
        return cls(settings, env, health(settings.base_url), load_model)

    @property
    def claude_paths(self):
        from pensieve_cli.claude_config import ClaudePaths

        return ClaudePaths.resolve(self.environ)

    def claude_settings(self) -> tuple[dict[str, Any] | None, str]:
        """settings.json's object, or None and why it cannot be used."""
        if "settings" not in self._cache:
            from pensieve_cli.claude_config import ConfigFileError, display, parse_json

            path = self.claude_paths.settings_json
            try:
                data, _ = parse_json(path.read_bytes(), path)
                result: tuple[dict[str, Any] | None, str] = (data, "")
            except FileNotFoundError:
                result = (None, f"{display(path)} does not exist")
            except (OSError, ConfigFileError) as exc:
                message = str(exc).split("; fix", 1)[0] if isinstance(exc, ConfigFileError) else str(exc)
                result = (None, message)
            self._cache["settings"] = result
        return self._cache["settings"]

    def claude_env_file(self) -> dict[str, Any]:
        data, _ = self.claude_settings()
        env = (data or {}).get("env", {})
        return env if isinstance(env, dict) else {}

    def entry(self):
        """The configured model's store entry, or None when it is not installed."""
        if "entry" not in self._cache:
            from pensieve_server.models.store import ModelError, ModelStore

            try:
                self._cache["entry"] = ModelStore(self.settings.paths.models_dir).get(self.settings.default_model)
            except ModelError:
                self._cache["entry"] = None
        return self._cache["entry"]

    def served(self) -> bool:
        """Whether the running server already has the configured model loaded."""
        health = self.health or {}
        name = self.settings.default_model
        return name in (health.get("models_loaded") or []) or (health.get("model") == name and bool(health.get("engine")))


def forwarding(ctx: Context, name: str) -> Check | None:
    """A skip for checks about the local model when an upstream server answers instead (engine = upstream)."""
    if ctx.settings.engine != "upstream":
        return None
    return Check(name, SKIP, f"skipped: requests go to the upstream at {ctx.settings.upstream_url or '(not set)'}")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# -- this machine ------------------------------------------------------------------------------------

def check_python(ctx: Context) -> Check:
    version = platform.python_version()
    system = f"macOS {platform.mac_ver()[0]}" if sys.platform == "darwin" else f"{platform.system()} {platform.release()}"
    detail = f"Python {version} on {system} ({platform.machine()})"
    if sys.version_info < MIN_PYTHON:
        return Check("python", FAIL, detail, f"Pensieve needs Python {'.'.join(map(str, MIN_PYTHON))} or newer")
    return Check("python", OK, detail)


MLX_DEVICES = {"metal": "Metal GPU", "cuda": "CUDA GPU", "cpu": "CPU"}


def check_mlx(ctx: Context) -> Check:
    if skip := forwarding(ctx, "mlx"):
        return skip
    from pensieve_server.engine.select import is_apple_silicon, mlx_device

    device = mlx_device()
    if device is None:
        if is_apple_silicon():
            return Check("mlx", FAIL, "MLX does not import", "pip install --force-reinstall mlx mlx-lm")
        return Check("mlx", WARN, "MLX does not import (only needed for --engine mlx; llama.cpp runs GGUF models)",
                     "pip install 'mlx[cpu]' mlx-lm, if you want MLX here")
    version = f"MLX {_version('mlx')}"
    if device == "cpu":
        return Check("mlx", WARN, f"{version} runs on the CPU here, which is much slower than llama.cpp",
                     "keep engine = auto (it picks llama.cpp here); MLX is fast on Apple Silicon GPUs",
                     data={"device": device})
    return Check("mlx", OK, f"{version} on the {MLX_DEVICES.get(device, device)}", data={"device": device})


ENGINE_DISTRIBUTIONS = {"llamacpp": "llama-cpp-python", "mlx": "mlx-lm"}
ENGINE_MODULES = {"llamacpp": "llama_cpp", "mlx": "mlx_lm"}


def check_engine(ctx: Context) -> Check:
    from pensieve_server.engine.base import ModelLoadError
    from pensieve_server.engine.select import describe_device, resolve_engine

    if ctx.settings.engine == "upstream":
        return Check("engine", OK, f"configured: upstream ({ctx.settings.upstream_api} API at "
                     f"{ctx.settings.upstream_url or '(not set)'})", data={"engine": "upstream"})
    try:
        engine = resolve_engine(ctx.settings.engine, ctx.entry())
    except ModelLoadError as exc:
        return Check("engine", FAIL, str(exc).split("; ", 1)[0], (str(exc).split("; ", 1) + [""])[1] or
                     "pensieve config set engine auto")
    how = "auto picks" if ctx.settings.engine == "auto" else "configured:"
    distribution = ENGINE_DISTRIBUTIONS.get(engine, engine)
    try:
        importlib.import_module(ENGINE_MODULES.get(engine, "pensieve_server.engine.scripted"))
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        return Check("engine", FAIL, f"{how} {engine}, but it does not import ({exc})",
                     f"pip install --force-reinstall {distribution}")
    ctx._cache["engine"] = engine
    summary = describe_device()
    device = (summary.get("engines", {}).get(engine) or {}).get("device")
    words = str(summary) if device == summary.get("device") else MLX_DEVICES.get(device or "", device or "?")
    return Check("engine", OK, f"{how} {engine} ({distribution} {_version(distribution)}) on the {words}",
                 data={"engine": engine, "device": device})


def check_gpu(ctx: Context) -> Check:
    """The GPU, and whether the engine in use computes on it; the exact rebuild command when not."""
    if skip := forwarding(ctx, "gpu"):
        return skip
    from pensieve_server.engine import devices
    from pensieve_server.engine.base import ModelLoadError
    from pensieve_server.engine.select import resolve_engine

    try:
        engine = ctx._cache.get("engine") or resolve_engine(ctx.settings.engine, ctx.entry())
    except ModelLoadError:
        return Check("gpu", SKIP, "skipped: no engine can run the model (see the engine line)")
    advice = devices.advise(engine)
    data = {"gpu": advice.gpu.to_json() if advice.gpu else None, "engine": engine, "on_gpu": advice.on_gpu}
    if advice.on_gpu is False:
        return Check("gpu", WARN, advice.detail, advice.fix, data=data)
    return Check("gpu", OK, advice.detail, data=data)


# -- the model ---------------------------------------------------------------------------------------

def model_fix(name: str) -> str:
    from pensieve_server.models import catalog

    if catalog.get(name) is not None:
        return f"pensieve models pull {name}"
    return "choose an installed model: pensieve setup --model NAME (see `pensieve models list`)"


def check_model(ctx: Context) -> Check:
    if ctx.settings.engine == "upstream":
        from pensieve_cli.upstream_check import check_upstream

        return check_upstream(ctx)
    name = ctx.settings.default_model
    entry = ctx.entry()
    if entry is None:
        return Check("model", FAIL, f"{name} is not installed", model_fix(name))
    missing_tiers = []
    if len({*ctx.settings.tiers.values()} - {"", name}):
        from pensieve_server.models.store import ModelError, ModelStore

        store = ModelStore(ctx.settings.paths.models_dir)
        for tier, model in sorted(ctx.settings.tiers.items()):
            if model and model != name:
                try:
                    store.get(model)
                except ModelError:
                    missing_tiers.append(f"{tier} → {model}")
    if missing_tiers:
        return Check("model", FAIL, f"{name} is installed, but the tier map names missing models: "
                     f"{', '.join(missing_tiers)}", "pensieve setup --model NAME, or `pensieve models pull` them")
    where = "embedded" if entry.builtin else entry.path
    return Check("model", OK, f"{name} ({entry.format}, {format_size(entry.size_bytes, precise=False)}, {where})",
                 data={"size_bytes": entry.size_bytes, "context_length": entry.context_length})


def check_model_loads(ctx: Context) -> Check:
    if skip := forwarding(ctx, "model loads"):
        return skip
    entry = ctx.entry()
    if entry is None:
        return Check("model loads", SKIP, "skipped: the model is not installed")
    if ctx.served():
        return Check("model loads", OK, f"loaded by the running server (pid {(ctx.health or {}).get('pid')})")
    if not ctx.load_model:
        return Check("model loads", SKIP, "skipped (--no-load)")
    available = available_ram_bytes()
    needed = ram_needed(entry.size_bytes)
    if available and available < needed:
        return Check("model loads", FAIL, f"not tried: {format_size(needed, precise=False)} needed, {format_size(available, precise=False)} "
                     "of memory available", "close other programs or choose a smaller model (`pensieve setup`)")
    from pensieve_server.engine.select import load_backend, resolve_engine
    from pensieve_server.models.store import ModelStore

    started = time.perf_counter()
    engine = ctx.settings.engine
    try:
        engine = ctx._cache.get("engine") or resolve_engine(engine, entry)
        backend = load_backend(entry, engine, ModelStore(ctx.settings.paths.models_dir), ctx.settings.context_length,
                               prefix_cache_bytes=0)
    except Exception as exc:  # noqa: BLE001 - any load failure is the finding
        return Check("model loads", FAIL, f"{entry.name} does not load on {engine}: {exc}",
                     "re-install it (`pensieve models rm` then `pull`), or try --engine")
    seconds = time.perf_counter() - started
    device = getattr(backend, "device", "?")
    backend.close()
    return Check("model loads", OK, f"{entry.name} loads on {engine} ({device}) in {seconds:.1f} s",
                 data={"load_s": round(seconds, 2), "device": device})


def available_ram_bytes() -> int:
    """Memory available for a new process (Linux: MemAvailable), or 0 when the OS does not say cheaply."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def ram_needed(model_bytes: int) -> int:
    """Weights plus room for the KV cache and the runtime: a deliberately rough estimate."""
    return int(model_bytes * 1.2) + GIB // 2


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_resources(ctx: Context) -> Check:
    from pensieve_server.models import catalog

    if skip := forwarding(ctx, "resources"):
        return skip
    name = ctx.settings.default_model
    entry, known = ctx.entry(), catalog.get(name)
    size = entry.size_bytes if entry else (known.size_bytes if known else 0)
    free_disk = shutil.disk_usage(_existing(ctx.settings.paths.models_dir)).free
    total, available = catalog.total_ram_bytes(), available_ram_bytes()
    memory = f"{format_size(available, precise=False)} of {format_size(total, precise=False)} memory free" if available else \
        f"{format_size(total, precise=False)} memory"
    detail = f"{format_size(free_disk, precise=False)} disk free, {memory}; {name} needs about {format_size(ram_needed(size), precise=False)}"
    data = {"disk_free_bytes": free_disk, "ram_total_bytes": total, "ram_available_bytes": available}
    if entry is None and size and free_disk < size * 1.1:
        return Check("resources", FAIL, f"{detail}, and {format_size(size, precise=False)} of disk to download",
                     "free some disk space first", data)
    if free_disk < GIB:
        return Check("resources", WARN, detail, "free some disk space: logs and model conversions need room", data)
    if known is not None and total and not catalog.fits(known, total):
        return Check("resources", WARN, f"{detail}; {name} is meant for {known.min_ram_gb} GB machines",
                     "expect swapping; `pensieve setup` recommends a model for this machine", data)
    if available and not ctx.served() and available < ram_needed(size):
        return Check("resources", FAIL, detail, "close other programs or choose a smaller model (`pensieve setup`)",
                     data)
    return Check("resources", OK, detail, data=data)


def check_disk_cache(ctx: Context) -> Check:
    """The prefix states kept on disk across restarts: size, limit, and (server running) how often they served."""
    from pensieve_cli.commands.daemon import disk_cache_summary, fetch_metrics, parse_metrics
    from pensieve_server.engine.disk_states import folder_usage, resolve_disk_bytes

    if skip := forwarding(ctx, "disk cache"):
        return skip
    folder = ctx.settings.paths.prefix_states_dir
    limit = resolve_disk_bytes(ctx.settings.disk_cache_bytes, folder)
    used, files = folder_usage(folder)
    data: dict[str, Any] = {"folder": str(folder), "bytes": used, "files": files, "limit_bytes": limit}
    if limit <= 0:
        return Check("disk cache", OK, f"off (disk_cache_bytes = 0); {files} prefix states in {folder}", data=data)
    detail = (f"{format_size(used, precise=False)} of {format_size(limit, precise=False)} in {files} "
              f"prefix states ({folder})")
    metrics_text = fetch_metrics(ctx.settings.base_url, ctx.settings.auth_token) \
        if ctx.health is not None and ctx.settings.auth_token else None
    if metrics_text is not None:
        summary = disk_cache_summary(parse_metrics(metrics_text))
        data.update(hits=summary["hits"], hit_rate=summary["hit_rate"])
        detail += f"; {summary['hits']} restored since start ({summary['hit_rate']:.0%} of cold prompts)"
    return Check("disk cache", OK, detail, data=data)


# -- the server --------------------------------------------------------------------------------------

def check_server(ctx: Context) -> Check:
    """Who holds the port: this Pensieve (which version, which model), nothing, or another program."""
    from pensieve_cli.daemon import describe_owner, pid_file_state, port_open

    settings = ctx.settings
    url, health = settings.base_url, ctx.health
    stale = pid_file_state(settings.paths).stale
    note = f" ({stale})" if stale else ""
    if health is not None:
        detail = (f"Pensieve {health.get('version')} at {url}, pid {health.get('pid')}, model {health.get('model')}"
                  f" on {health.get('engine')} ({health.get('device')}), up {round(health.get('uptime_s') or 0)} s")
        if health.get("model") != settings.default_model:
            return Check("server", WARN, f"{detail}; the config says {settings.default_model}",
                         "pensieve restart", dict(health))
        return Check("server", OK, detail, data=dict(health))
    if port_open(settings.host, settings.port):
        return Check("server", FAIL, f"port {settings.port} is held by {describe_owner(settings.port)}, "
                     f"not by Pensieve{note}",
                     "stop that program, or move Pensieve: pensieve setup --port N, then pensieve start")
    return Check("server", FAIL, f"not running at {url} (port {settings.port} is free){note}", "pensieve start")


# -- Claude Code's config ----------------------------------------------------------------------------

def check_claude_json(ctx: Context) -> Check:
    from pensieve_cli.claude_config import ConfigFileError, display, parse_json

    path = ctx.claude_paths.claude_json
    try:
        data, _ = parse_json(path.read_bytes(), path)
    except FileNotFoundError:
        return Check("claude.json", FAIL, f"{display(path)} does not exist: Claude Code will ask you to log in",
                     "pensieve setup")
    except (OSError, ConfigFileError) as exc:
        return Check("claude.json", FAIL, str(exc).split("; fix", 1)[0], f"fix or move {display(path)}")
    if data.get("hasCompletedOnboarding") is not True:
        return Check("claude.json", FAIL, f"{display(path)}: onboarding is not marked done, so Claude Code "
                     "will ask you to log in", "pensieve setup")
    return Check("claude.json", OK, f"{display(path)}: onboarding done")


def _same_url(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        return url.strip().rstrip("/").replace("://localhost:", "://127.0.0.1:")

    return norm(a) == norm(b)


def check_settings_json(ctx: Context) -> Check:
    from pensieve_cli.claude_config import display

    path = display(ctx.claude_paths.settings_json)
    data, problem = ctx.claude_settings()
    if data is None:
        exists = "does not exist" not in problem
        return Check("settings.json", FAIL, problem,
                     f"fix or move {path}, then run `pensieve setup`" if exists else "pensieve setup")
    if not isinstance(data.get("env", {}), dict):
        return Check("settings.json", FAIL, f'{path}: "env" is not an object', f"fix {path}, then `pensieve setup`")
    base_url = ctx.claude_env_file().get("ANTHROPIC_BASE_URL")
    if not base_url:
        return Check("settings.json", FAIL, f"{path} sets no ANTHROPIC_BASE_URL: Claude Code talks to Anthropic",
                     "pensieve setup")
    if not _same_url(str(base_url), ctx.settings.base_url):
        return Check("settings.json", FAIL, f"{path} points Claude Code at {base_url}, but Pensieve serves "
                     f"{ctx.settings.base_url}", "pensieve setup")
    return Check("settings.json", OK, f"{path} points Claude Code at {base_url}")


def effective_auth(ctx: Context) -> tuple[str, str, str]:
    """``(variable, token, where)`` Claude Code sends: settings.json ``env`` wins over the shell
    (measured with Claude Code 2.1), and ``ANTHROPIC_AUTH_TOKEN`` (Bearer) is what Pensieve reads first."""
    file_env = ctx.claude_env_file()
    for key in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"):
        if file_env.get(key):
            return key, str(file_env[key]), "settings.json"
        if ctx.environ.get(key):
            return key, ctx.environ[key], "this shell"
    return "", "", ""


def check_token(ctx: Context) -> Check:
    from pensieve_server.auth_token import fingerprint

    if ctx.claude_settings()[0] is None:
        return Check("token", SKIP, "skipped: settings.json cannot be read")
    key, token, where = effective_auth(ctx)
    if not token:
        return Check("token", FAIL, f"settings.json sets no ANTHROPIC_AUTH_TOKEN: {RETRY_HANG}", "pensieve setup")
    expected = ctx.settings.auth_token
    mine = f"{key} {fingerprint(token)} (from {where})"
    if ctx.health is not None:
        accepted = token_accepted(ctx.settings.base_url, token)
        if accepted is True:
            return Check("token", OK, f"{mine} is accepted by the server")
        if accepted is False:
            return Check("token", FAIL, f"{mine} is refused by the server (its token is {fingerprint(expected)}): "
                         f"{RETRY_HANG}", "pensieve setup (writes the server's token), then restart claude")
    if token != expected:
        return Check("token", FAIL, f"{mine} differs from the server's token {fingerprint(expected)}: {RETRY_HANG}",
                     "pensieve setup (writes the server's token)")
    return Check("token", OK, f"{mine} matches the server's token")


def token_accepted(base_url: str, token: str) -> bool | None:
    """True/False from an authenticated request; None when the server gave no clear answer."""
    import httpx

    try:
        response = httpx.get(f"{base_url}/v1/models", headers={"authorization": f"Bearer {token}"}, timeout=5)
    except httpx.HTTPError:
        return None
    return True if response.status_code == 200 else False if response.status_code == 401 else None


def check_api_timeout(ctx: Context) -> Check:
    if ctx.claude_settings()[0] is None:
        return Check("API timeout", SKIP, "skipped: settings.json cannot be read")
    raw = ctx.claude_env_file().get("API_TIMEOUT_MS")
    try:
        value = int(str(raw)) if raw is not None else 0
    except ValueError:
        value = 0
    if value >= MIN_API_TIMEOUT_MS:
        return Check("API timeout", OK, f"API_TIMEOUT_MS={value} ({value // 60000} min)")
    shown = f"API_TIMEOUT_MS={raw}" if raw is not None else "API_TIMEOUT_MS is not set"
    return Check("API timeout", WARN, f"{shown}: Claude Code may give up while a long prompt is still being read",
                 f"pensieve setup (sets {MIN_API_TIMEOUT_MS})")


def check_shell_env(ctx: Context) -> Check:
    """Claude Code variables in this shell. settings.json ``env`` wins over them (measured with Claude
    Code 2.1), so a different value there is only a warning; one the file does not set is used as is."""
    from pensieve_cli.claude_env import ENV_KEYS, env_for_settings
    from pensieve_server.auth_token import fingerprint

    file_env = ctx.claude_env_file()
    wanted = env_for_settings(ctx.settings, ctx.settings.auth_token)
    secret = {"ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"}
    used, overridden = [], []
    for key in (*ENV_KEYS, "ANTHROPIC_API_KEY"):
        value = ctx.environ.get(key)
        if value is None:
            continue
        shown = f"{key} ({fingerprint(value)})" if key in secret else f"{key}={value}"
        if key in file_env:
            if value != str(file_env[key]):
                overridden.append((key, shown))
        elif value != wanted.get(key, ctx.settings.auth_token):
            used.append((key, shown))
    if not used and not overridden:
        return Check("shell env", OK, "no Claude Code variables in this shell that differ from settings.json")
    keys = " ".join(key for key, _ in used + overridden)
    fix = f"unset {keys} (and remove them from your shell profile)"
    serious = [key for key, _ in used if key in ("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN")]
    parts = []
    if used:
        parts.append(f"this shell sets {', '.join(s for _, s in used)}, which Claude Code uses because "
                     "settings.json does not set it")
    if overridden:
        parts.append(f"this shell sets {', '.join(s for _, s in overridden)}; settings.json overrides it for "
                     "Claude Code, but other tools (the Anthropic SDK, scripts) still see it")
    if any(key == "ANTHROPIC_API_KEY" for key, _ in used):
        parts.append("Claude Code sends ANTHROPIC_API_KEY as x-api-key and may ask whether to use it")
    return Check("shell env", FAIL if serious else WARN, "; ".join(parts), fix)


def claude_binary() -> str | None:
    return shutil.which("claude")


def check_claude_cli(ctx: Context) -> Check:
    binary = claude_binary()
    if binary is None:
        return Check("claude", WARN, "Claude Code (`claude`) is not on PATH",
                     "npm install -g @anthropic-ai/claude-code")
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("claude", WARN, f"{binary} --version failed: {exc}", "reinstall Claude Code")
    version = (out.stdout.strip() or out.stderr.strip()).splitlines()
    if out.returncode != 0 or not version:
        return Check("claude", WARN, f"{binary} --version exited with {out.returncode}", "reinstall Claude Code")
    return Check("claude", OK, f"{version[0]} at {binary}", data={"version": version[0], "path": binary})


LOCAL_CHECKS = (check_python, check_mlx, check_engine, check_gpu, check_model, check_server, check_model_loads,
                check_resources, check_disk_cache, check_claude_json, check_settings_json, check_token,
                check_api_timeout, check_shell_env, check_claude_cli)
