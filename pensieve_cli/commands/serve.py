"""``pensieve serve``: the API server in the foreground (Ctrl-C stops it)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pensieve_cli.context import settings_from_args
from pensieve_cli.daemon import LOG_KEEP, LOG_MAX_BYTES
from pensieve_cli.errors import ExitStatus

SERVE_FLAGS = {"host": "host", "port": "port", "default_model": "model", "engine": "engine",
               "context_length": "context_length", "parallel": "parallel", "log_level": "log_level"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the API server in the foreground",
        description="Serve the Anthropic Messages API on a local model until Ctrl-C.",
        epilog="examples:\n  pensieve serve\n  pensieve serve --port 8080 --model qwen2.5-coder-7b\n  pensieve serve --parallel 4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_flags(parser)
    # For `pensieve start` (see pensieve_cli.server_log): log to a file rotated while the server runs.
    parser.add_argument("--log-file", dest="log_file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--log-max-bytes", dest="log_max_bytes", type=int, default=LOG_MAX_BYTES, help=argparse.SUPPRESS)
    parser.add_argument("--log-keep", dest="log_keep", type=int, default=LOG_KEEP, help=argparse.SUPPRESS)
    parser.add_argument("--log-check-s", dest="log_check_s", type=float, default=30.0, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 7777)")
    parser.add_argument("--model", help="local model to serve by default (default smollm2-135m)")
    parser.add_argument("--engine", choices=("auto", "mlx", "llamacpp", "upstream"),
                        help="inference engine (default auto; upstream forwards to upstream_url)")
    parser.add_argument("--context-length", type=int, dest="context_length", help="cap the context window")
    parser.add_argument("--parallel", type=int,
                        help="requests generated together (default 0: auto, 2 on llama.cpp where memory allows)")
    parser.add_argument("--log-level", dest="log_level", choices=("debug", "info", "warning", "error"),
                        help="how much the server logs (default info)")


def configure_logging(level: str, args: argparse.Namespace | None = None) -> None:
    """Log to stderr; with ``--log-file``, to that file, rotated by size while the server runs."""
    handler: logging.Handler
    if args is not None and getattr(args, "log_file", None):
        from pensieve_cli.server_log import ServerLogHandler

        handler = ServerLogHandler(args.log_file, args.log_max_bytes, args.log_keep)
        handler.watch(args.log_check_s)
    else:
        handler = logging.StreamHandler(sys.stderr)
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )


def run(args: argparse.Namespace) -> int:
    from pensieve_server.app import create_app
    from pensieve_server.auth_token import ensure_token
    from pensieve_server.bind_policy import check_bind
    from pensieve_server.engine.base import EngineError
    from pensieve_server.engine.pool import ModelPool
    from pensieve_server.models.store import ModelStore
    from pensieve_server.runner import build_server, serve_forever

    settings = settings_from_args(args, SERVE_FLAGS)
    configure_logging(settings.log_level, args)
    log = logging.getLogger("pensieve")
    if not settings.auth_token:
        settings = settings.replace(auth_token=ensure_token(settings.paths.token_file))
    warning = check_bind(settings.host, settings.auth_token)
    if warning:
        log.warning("%s", warning)
    store = ModelStore(settings.paths.models_dir)
    pool = ModelPool(settings, store)
    app = create_app(settings, pool)
    server = build_server(app, settings)
    try:
        model = app.extensions["pensieve"].provider.preload(settings.default_model)
    except EngineError:
        server.close()
        raise
    print(
        f"Pensieve serving {model.name} on {model.engine} ({model.device}) "
        f"at {settings.base_url} — Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    serve_forever(server, on_stop=app.extensions["pensieve"].provider.close)
    return ExitStatus.OK


