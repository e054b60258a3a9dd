"""Every error leaves the server in Anthropic's shape, with the right status and no traceback."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from pensieve_server.anthropic.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
)

log = logging.getLogger(__name__)


def error_response(error: ApiError) -> Response:
    response = jsonify(error.to_dict())
    response.status_code = error.status
    if error.status == 529:
        response.headers["retry-after"] = "1"
    return response


def _from_http_exception(exc: HTTPException) -> ApiError:
    code = exc.code or 500
    if code == 404:
        return NotFound("Not found: no such route (see /v1/messages, /v1/models, /health)")
    if code == 405:
        return MethodNotAllowed(f"Method not allowed for this route: {exc.description or ''}".strip())
    if code == 413:
        return RequestTooLarge("Request body is larger than the server's limit (max_body_bytes)")
    if 400 <= code < 500:
        error = InvalidRequest(exc.description or exc.name)
        error.status = code
        return error
    return InternalError("Internal server error")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException) -> Response:
        return error_response(_from_http_exception(exc))

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(InternalError(f"Internal server error ({type(exc).__name__})"))
