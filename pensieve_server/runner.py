"""Waitress, configured for streaming model output: no buffering, enough threads, bounded inputs."""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import threading
from collections.abc import Callable

from flask import Flask
from waitress.server import create_server

from pensieve_server.settings import Settings

log = logging.getLogger(__name__)


class PortInUse(OSError):
    """The port is taken; the message names it and what to run."""


def build_server(app: Flask, settings: Settings, port: int | None = None):
    """A Waitress server bound to settings.host:port (port 0 picks a free one, for tests)."""
    try:
        return create_server(
            app,
            host=settings.host,
            port=settings.port if port is None else port,
            threads=max(4, settings.threads),
            # Each open stream holds a worker thread; quiet idle connections are closed after a minute
            # (streams in progress are not idle: we write pings during long prefills).
            channel_timeout=60,
            cleanup_interval=10,  # silent connections are closed within channel_timeout + 10 s
            connection_limit=max(100, settings.threads * 4),
            # Flask enforces max_body_bytes with an Anthropic-shaped 413; Waitress is the backstop.
            max_request_body_size=settings.max_body_bytes + 1024 * 1024,
            max_request_header_size=64 * 1024,
            ident="pensieve",
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=True,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {settings.port} on {settings.host} is already in use: is Pensieve already running? "
                f"Check `pensieve status`, or pick another port with --port"
            ) from None
        raise


def serve_forever(server, on_stop: Callable[[], None] | None = None) -> None:
    """Run until Ctrl-C or SIGTERM, then close connections and call ``on_stop``."""

    def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        server.run()
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        stop_server(server)
        if on_stop is not None:
            on_stop()


def stop_server(server) -> None:
    """Close every connection. From another thread, the closing runs inside the server's own loop
    (via its trigger) so the loop never selects on a closed socket; the loop then ends by itself."""
    from waitress import wasyncore

    with contextlib.suppress(Exception):  # best effort during shutdown
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
    if getattr(server, "_serving_thread", None) not in (None, threading.current_thread()):
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
            return
        except OSError:  # the loop has already ended and closed its trigger: nothing runs to race with
            pass
    wasyncore.close_all(server._map)


def run_in_thread(server) -> threading.Thread:
    """Serve from a daemon thread (tests, benchmarks); stop with :func:`stop_server`."""
    thread = threading.Thread(target=server.run, name="pensieve-http", daemon=True)
    server._serving_thread = thread
    thread.start()
    return thread
