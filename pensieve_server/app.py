"""``create_app(settings, pool)``: the Flask app, built from resolved settings; reads no files itself.

The provider (who answers) and the Messages service are built here, once, so no request thread
ever races to create them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flask import Flask

from pensieve_server.engine.pool import ModelPool
from pensieve_server.http.errors import register_error_handlers
from pensieve_server.http.guard import install_guards
from pensieve_server.metrics import Metrics
from pensieve_server.providers import Provider, make_provider
from pensieve_server.service import MessagesService
from pensieve_server.settings import Settings


@dataclass
class ServerState:
    """What every route needs, hung on ``app.extensions["pensieve"]``; built once, before the first request."""

    settings: Settings
    pool: ModelPool
    provider: Provider
    service: MessagesService
    metrics: Metrics
    started_at: float = field(default_factory=time.time)


def create_app(settings: Settings, pool: ModelPool) -> Flask:
    from pensieve_server.http.messages import messages
    from pensieve_server.http.meta import meta

    app = Flask("pensieve_server", static_folder=None)  # no /static route: nothing to serve
    app.url_map.merge_slashes = False  # `//` would be an HTML redirect that skips the Anthropic errors
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # Anthropic's field order, as the SDKs print it
    app.json.compact = True
    metrics = Metrics()
    provider = make_provider(settings, pool)  # local engines or an upstream: chosen here, once
    app.extensions["pensieve"] = ServerState(settings, pool, provider, MessagesService(settings, provider, metrics),
                                             metrics)
    install_guards(app, settings)
    register_error_handlers(app)
    app.register_blueprint(meta)
    app.register_blueprint(messages)
    return app
