"""``/v1/messages`` and ``/v1/messages/count_tokens`` (any query string, e.g. ``?beta=true``)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context

from pensieve_server.anthropic.errors import ApiError, InternalError, InvalidRequest
from pensieve_server.anthropic.sse import encode_event, error_event, ping_event
from pensieve_server.anthropic.stream import fold_events
from pensieve_server.request_log import log_rejected
from pensieve_server.service import MessagesService

log = logging.getLogger(__name__)
messages = Blueprint("messages", __name__)


def _service() -> MessagesService:
    return current_app.extensions["pensieve"].service


def _not_json_constant(name: str) -> Any:
    """Python's json reads ``NaN`` and ``Infinity``; JSON (RFC 8259) has none, and no upstream's encoder sends them."""
    raise ValueError(f"{name} is not a JSON value")


def _json_body() -> Any:
    """The decoded body; text that is not valid Unicode is refused next, in validation (docs/input.md)."""
    content_type = request.mimetype or ""
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise InvalidRequest(f"Content-Type must be application/json, got {content_type!r}")
    data = request.get_data(cache=False)
    if not data:
        raise InvalidRequest("request body is empty: expected a JSON object")
    import json

    try:
        return json.loads(data, parse_constant=_not_json_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply to decode") from None


@messages.route("/v1/messages", methods=["POST"])
def create_message():
    service = _service()
    prepared = service.prepare(_json_body())
    job = service.submit(prepared)
    headers = {"pensieve-model": prepared.model_name}
    if prepared.fit_actions:
        headers["pensieve-context-fit"] = "; ".join(prepared.fit_actions)[:1000]
    if prepared.notices:
        headers["x-pensieve-notice"] = "; ".join(prepared.notices)[:1000]
    request_id = g.get("request_id", "")
    if prepared.request.stream:
        interval = current_app.extensions["pensieve"].settings.ping_interval

        def stream():
            events = service.events(prepared, job, ping_interval=interval, request_id=request_id)
            try:
                for item in events:
                    yield ping_event() if item is None else encode_event(*item)
            except ApiError as exc:
                yield error_event(exc.error_type, exc.message)
            except Exception as exc:  # noqa: BLE001 - the status line is sent: the client still gets an error event
                log.exception("stream failed")
                yield error_event("api_error", f"Internal server error ({type(exc).__name__})")
            finally:
                events.close()

        return Response(
            stream_with_context(stream()),
            mimetype="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    events = service.events(prepared, job, request_id=request_id)
    try:
        message = fold_events(item for item in events if item is not None)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        if not prepared.forwarded:
            raise
        # Another server's events are relayed as they came: ones that do not fold are its fault.
        raise InternalError(f"the upstream's answer does not fold into a Message ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from None
    finally:
        events.close()
    response = jsonify(message)
    response.headers.update(headers)
    return response


@messages.route("/v1/messages/count_tokens", methods=["POST"])
def count_tokens():
    return jsonify({"input_tokens": _service().count_tokens(_json_body())})


@messages.after_app_request
def record(response: Response) -> Response:
    state = current_app.extensions["pensieve"]
    route = request.url_rule.rule if request.url_rule else "unknown"
    state.metrics.record_request(route, response.status_code)
    if route == "/v1/messages" and response.status_code >= 400:
        log_rejected(g.get("request_id", ""), response.status_code, response.get_json(silent=True))
    log.debug("%s %s %s %s", g.get("request_id"), request.method, request.path, response.status_code)
    return response
