"""Every error row of the API: status, Anthropic error shape, request-id; never a 5xx for bad input."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serverutil import running_server

GOOD = {"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert response.headers["request-id"].startswith("req_")
    return body


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"{not json", "JSON"),
        (b"[]", ""),
        (json.dumps({**GOOD, "max_tokens": 0}).encode(), "max_tokens"),
        (json.dumps({**GOOD, "max_tokens": "5"}).encode(), "max_tokens"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "messages"}).encode(), "messages"),
        (json.dumps({**GOOD, "messages": "hi"}).encode(), "messages"),
        (json.dumps({**GOOD, "messages": [{"role": "robot", "content": "x"}]}).encode(), "role"),
        (json.dumps({**GOOD, "temperature": "hot"}).encode(), "temperature"),
    ],
)
def test_malformed_requests_are_400(server, payload, fragment):
    with server.client() as http:
        response = http.post("/v1/messages", content=payload, headers={"content-type": "application/json"})
    body = assert_error(response, 400, "invalid_request_error")
    assert fragment in body["error"]["message"]


def test_wrong_content_type_is_400(server):
    with server.client() as http:
        response = http.post("/v1/messages", content=json.dumps(GOOD), headers={"content-type": "text/plain"})
    assert_error(response, 400, "invalid_request_error")


def test_missing_token_is_401(server):
    response = httpx.post(server.base_url + "/v1/messages", json=GOOD)
    assert_error(response, 401, "authentication_error")


def test_health_and_head_need_no_token(server):
    assert httpx.get(server.base_url + "/health").status_code == 200
    assert httpx.head(server.base_url + "/").status_code == 200


def test_unknown_route_is_404(server):
    with server.client() as http:
        assert_error(http.get("/v1/nothing"), 404, "not_found_error")


def test_wrong_method_is_405(server):
    with server.client() as http:
        assert_error(http.get("/v1/messages"), 405, "invalid_request_error")


def test_unknown_model_is_404(server):
    with server.client() as http:
        body = assert_error(http.post("/v1/messages", json={**GOOD, "model": "llama-9000"}), 404, "not_found_error")
    assert "scripted" in body["error"]["message"]


def test_body_over_limit_is_413(scripted):
    with running_server({"scripted": scripted}, max_body_bytes=2048) as server, server.client() as http:
        big = {**GOOD, "messages": [{"role": "user", "content": "x" * 4096}]}
        assert_error(http.post("/v1/messages", json=big), 413, "request_too_large")


def test_prompt_longer_than_context_is_400_with_claude_code_wording(scripted):
    scripted.info = scripted.info.__class__(**{**scripted.info.__dict__, "context_length": 64})
    with running_server({"scripted": scripted}, context_policy="strict") as server, server.client() as http:
        long = {**GOOD, "messages": [{"role": "user", "content": "word " * 100}]}
        body = assert_error(http.post("/v1/messages", json=long), 400, "invalid_request_error")
    assert body["error"]["message"].startswith("prompt is too long: ")
    assert body["error"]["message"].endswith(" tokens > 64 maximum")


def test_max_tokens_above_model_limit_is_400_when_strict(scripted):
    with running_server({"scripted": scripted}, context_policy="strict") as server, server.client() as http:
        body = assert_error(http.post("/v1/messages", json={**GOOD, "max_tokens": 10**7}), 400,
                            "invalid_request_error")
    assert "max_tokens" in body["error"]["message"]


def test_image_for_text_model_is_a_note_not_a_400(server, scripted):
    """One pasted screenshot must not end the session: the model reads a note, the response says so."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    read = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "x.png"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [image]}
    with server.client() as http:
        response = http.post("/v1/messages", json={**GOOD, "messages": [
            {"role": "user", "content": [image, {"type": "text", "text": "what?"}]},
            {"role": "assistant", "content": [read]},
            {"role": "user", "content": [result]}]})
    assert response.status_code == 200, response.text
    assert response.headers["x-pensieve-notice"] == "2 images replaced by a text note: model scripted cannot see images"
    assert scripted.prompts[-1].count("omitted: the local model cannot see images") == 2
    assert "iVBORw0KGgo" not in scripted.prompts[-1]


def test_full_queue_is_529_overloaded(scripted):
    scripted.delay_s = 0.05
    with running_server({"scripted": scripted}, queue_size=0) as server:
        import threading

        with server.client() as http:
            # Occupy the engine with one long streaming request; the next one finds the queue full.
            scripted.enqueue("x" * 200)
            started = threading.Event()

            def hog() -> None:
                with server.client() as other, other.stream("POST", "/v1/messages", json={
                        **GOOD, "max_tokens": 200, "stream": True}) as response:
                    for _ in response.iter_bytes():
                        started.set()

            thread = threading.Thread(target=hog)
            thread.start()
            assert started.wait(10)
            response = http.post("/v1/messages", json=GOOD)
            thread.join()
    assert_error(response, 529, "overloaded_error")


def test_engine_failure_is_500_api_error_and_next_request_works(scripted):
    with running_server({"scripted": scripted}) as server, server.client() as http:
        scripted.fail_after = 2
        scripted.enqueue("this will break")
        body = assert_error(http.post("/v1/messages", json=GOOD), 500, "api_error")
        assert "Traceback" not in body["error"]["message"]
        scripted.fail_after = None
        scripted.enqueue("fine again")
        ok = http.post("/v1/messages", json={**GOOD, "max_tokens": 50})
        assert ok.json()["content"][0]["text"] == "fine again"


def test_engine_failure_mid_stream_is_error_event(scripted):
    with running_server({"scripted": scripted}) as server, server.client() as http:
        scripted.fail_after = 3
        scripted.enqueue("this will break")
        with http.stream("POST", "/v1/messages", json={**GOOD, "stream": True}) as response:
            text = response.read().decode()
    assert "event: message_start" in text
    assert "event: error" in text
    assert '"api_error"' in text


def test_foreign_host_header_is_403(server):
    with server.client() as http:
        assert_error(http.get("/v1/models", headers={"host": "evil.example:7777"}), 403, "permission_error")


def test_foreign_origin_is_403(server):
    with server.client() as http:
        response = http.get("/v1/models", headers={"origin": "https://evil.example"})
    assert_error(response, 403, "permission_error")
    assert "access-control-allow-origin" not in response.headers


def test_every_response_has_request_id(server):
    with server.client() as http:
        assert http.get("/v1/models").headers["request-id"].startswith("req_")
