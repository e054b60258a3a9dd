"""Request guards: request ids, Host/Origin checks (DNS rebinding), token auth in constant time."""

from __future__ import annotations

import secrets
import time

from flask import Flask, Response, g, request

from pensieve_server.anthropic.errors import AuthenticationError, PermissionDenied
from pensieve_server.auth_token import tokens_match
from pensieve_server.bind_policy import WILDCARD_HOSTS
from pensieve_server.settings import Settings

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
# Routes that answer without a token: liveness probes and the static API description only,
# nothing that reveals local state or spends compute.
PUBLIC_ENDPOINTS = frozenset({"meta.root", "meta.health", "meta.openapi"})
CORS_HEADERS = ("authorization, x-api-key, content-type, anthropic-version, anthropic-beta, "
                "anthropic-dangerous-direct-browser-access")


def request_token() -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(settings: Settings) -> frozenset[str]:
    hosts = set(LOOPBACK_HOSTS)
    if settings.host not in WILDCARD_HOSTS:
        hosts.add(settings.host.lower())
    return frozenset(hosts)


def install_guards(app: Flask, settings: Settings) -> None:
    hosts = allowed_hosts(settings)
    binds_everywhere = settings.host in WILDCARD_HOSTS
    origins = frozenset(settings.allowed_origins)

    @app.before_request
    def guard() -> None:
        g.request_id = "req_" + secrets.token_hex(12)
        g.started = time.perf_counter()
        if not binds_everywhere and _host_name(request.host) not in hosts:
            raise PermissionDenied(f"Host {request.host!r} is not allowed (Pensieve answers only loopback names)")
        origin = request.headers.get("Origin")
        if origin and origin not in origins:
            raise PermissionDenied(f"Origin {origin!r} is not allowed (set allowed_origins to permit a browser app)")
        if request.endpoint in PUBLIC_ENDPOINTS:
            return
        if request.method == "OPTIONS" and origin:
            return  # a CORS preflight carries no credentials; add_headers answers it
        if not settings.auth_token:
            return
        if not tokens_match(request_token(), settings.auth_token):
            raise AuthenticationError(
                "invalid x-api-key or bearer token: use the token from `pensieve claude-env` (ANTHROPIC_AUTH_TOKEN)"
            )

    @app.after_request
    def add_headers(response: Response) -> Response:
        response.headers["request-id"] = g.get("request_id", "req_none")
        origin = request.headers.get("Origin")
        if origin and origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, HEAD, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
        return response
