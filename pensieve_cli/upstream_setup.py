"""``pensieve setup --upstream URL``: what to store when another server answers instead of a local model.

The choice is written to config.toml (mode 0600: it may hold the upstream's API key) by the same
backed-up, undoable writer as the rest of setup. Without ``--upstream-model`` the upstream is asked
for its models once and the first is used; when it cannot be reached, Pensieve asks again when
it serves (``upstream_model`` stays empty).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from pensieve_cli import ui
from pensieve_cli.errors import CliError, ExitStatus
from pensieve_server.settings import TIERS, Settings
from pensieve_server.upstream import DISCOVER

PROBE_TIMEOUT_S = 5.0


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", metavar="URL",
                        help="forward to an existing OpenAI-compatible server (vLLM, llama.cpp server, Ollama, "
                        "LM Studio, mlx_lm.server) instead of a local model")
    parser.add_argument("--upstream-model", metavar="MODEL", help="the upstream's model id (default: its first)")
    parser.add_argument("--upstream-api-key", metavar="KEY", help="API key the upstream expects (stored 0600)")
    parser.add_argument("--upstream-api", choices=("openai", "anthropic"),
                        help="what the upstream speaks (default openai; anthropic forwards /v1/messages)")
    parser.add_argument("--upstream-context-length", type=int, metavar="N",
                        help="the upstream model's context in tokens, to fit long prompts (default: no fitting)")


@dataclass(frozen=True)
class UpstreamChoice:
    url: str
    model: str  # "" = ask the upstream for its first model when serving
    api: str
    api_key: str
    context_length: int | None = None

    @property
    def served_name(self) -> str:
        """The name Pensieve lists and maps Claude tiers to."""
        return self.model or DISCOVER

    def config(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "engine": "upstream", "upstream_url": self.url, "upstream_model": self.model, "upstream_api": self.api,
            "default_model": self.served_name, **{f"tiers.{tier}": self.served_name for tier in TIERS},
        }
        if self.api_key:
            values["upstream_api_key"] = self.api_key
        if self.context_length is not None:
            values["upstream_context_length"] = self.context_length
        return values


def wants_upstream(args: argparse.Namespace, settings: Settings) -> bool:
    """``--upstream`` given, or already forwarding and no ``--model`` asks to go back to a local model."""
    flags = ("upstream_model", "upstream_api_key", "upstream_api", "upstream_context_length")
    if getattr(args, "upstream", None):
        if args.model is not None:
            raise CliError("--model chooses a local model and --upstream forwards to another server: use one",
                           ExitStatus.USAGE)
        return True
    if any(getattr(args, flag, None) is not None for flag in flags):
        raise CliError("--upstream-model, --upstream-api-key, --upstream-api and --upstream-context-length "
                       "go with --upstream URL", ExitStatus.USAGE)
    return args.model is None and settings.engine == "upstream" and bool(settings.upstream_url)


def first_model(url: str, api_key: str, api: str) -> str:
    """The upstream's first listed model, or "" (with a warning) when it cannot be asked now."""
    from pensieve_server.anthropic.errors import ApiError
    from pensieve_server.upstream.client import UpstreamClient

    client = UpstreamClient(url, api_key, api, PROBE_TIMEOUT_S)
    try:
        models = client.models(timeout=PROBE_TIMEOUT_S)
    except ApiError as exc:
        ui.warning(f"{exc.message}; Pensieve will ask it for its model when it serves "
                   "(or pass --upstream-model)")
        return ""
    finally:
        client.close()
    if not models:
        ui.warning("the upstream lists no models; pass --upstream-model")
        return ""
    return models[0]


def choose_upstream(args: argparse.Namespace, settings: Settings) -> UpstreamChoice:
    """The upstream from the flags, or the configured one when setup runs again without ``--upstream``."""
    if not args.upstream:
        return UpstreamChoice(settings.upstream_url, settings.upstream_model, settings.upstream_api,
                              settings.upstream_api_key)
    url = args.upstream.strip()
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--upstream must be an http:// or https:// URL, got {url!r}", ExitStatus.USAGE)
    if args.upstream_context_length is not None and args.upstream_context_length < 0:
        raise CliError("--upstream-context-length must be 0 (unknown) or more", ExitStatus.USAGE)
    api = args.upstream_api or settings.upstream_api
    api_key = args.upstream_api_key if args.upstream_api_key is not None else settings.upstream_api_key
    model = args.upstream_model or first_model(url, api_key, api)
    if model and not args.upstream_model and not args.quiet:
        ui.success(f"the upstream at {url} serves {model}")
    return UpstreamChoice(url, model, api, api_key, args.upstream_context_length)
