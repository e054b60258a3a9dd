"""HTTP to the upstream: one pooled httpx client, and each streamed answer read on its own thread.

Reading on a thread lets the HTTP worker send keepalive pings while the upstream is still reading
a long prompt, and get the upstream's refusal (401, 429, unreachable …) before Pensieve sends its
own status line, so those arrive as proper HTTP errors rather than mid-stream events.
Stopping early (the client went away) closes the upstream connection, which stops its generation.
The API key is sent as a header and never logged.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from pensieve_server.anthropic.errors import ApiError, InternalError
from pensieve_server.anthropic.validate import find_lone_surrogate
from pensieve_server.upstream import errors

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
_STARTED, _END = object(), object()

Decoder = Callable[[httpx.Response], Iterator[Any]]


def base_url(url: str) -> str:
    """``url`` without a trailing ``/`` or ``/v1`` (people paste Ollama's ``…:11434/v1``), query or fragment."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    path = path[:-3] if path.endswith("/v1") else path
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def display_url(url: str) -> str:
    """``url`` safe to show: no user:password."""
    parts = urlsplit(base_url(url))
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` pairs from Server-Sent Events lines; ``event`` is "message" when unnamed."""
    event, data = "", []
    for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)


class UpstreamClient:
    """The upstream's address, key and timeouts, with a connection pool shared by every request."""

    def __init__(self, url: str, api_key: str = "", api: str = "openai", read_timeout: float = 600.0) -> None:
        self.base = base_url(url)
        self.display = display_url(url)
        self.api = api
        self.read_timeout = read_timeout
        headers = {"accept": "application/json, text/event-stream"}
        if api == "anthropic":
            headers["anthropic-version"] = "2023-06-01"
            if api_key:
                headers["x-api-key"] = api_key
        elif api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=read_timeout, write=60.0, pool=read_timeout),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            follow_redirects=False,
            trust_env=False,  # a loopback upstream must not go through the machine's HTTP proxy
        )
        self._lock = threading.Lock()
        self._first_model: str | None = None

    def url(self, path: str) -> str:
        return self.base + path

    def _check(self, response: httpx.Response, path: str) -> None:
        if response.status_code >= 400:
            error = errors.from_status(response.status_code, response.text, self.display, path)
            error.message = printable(error.message)  # the upstream's words may hold a lone surrogate escape
            raise error

    def request_json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """One small JSON exchange (model list, token counts); upstream problems raise ApiError."""
        try:
            response = self.http.request(method, self.url(path), json=body,
                                         timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as exc:
            raise errors.from_transport(exc, self.display, timeout or self.read_timeout) from None
        self._check(response, path)
        return upstream_json(response.content, self.display, f"an answer to {path}")

    def models(self, timeout: float = 10.0) -> list[str]:
        """Model ids from ``GET /v1/models`` (OpenAI and Anthropic lists share the ``data[].id`` shape)."""
        data = self.request_json("GET", "/v1/models", timeout=timeout)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):  # Ollama's native list, for a base URL without /v1 support
            items = data.get("models") if isinstance(data, dict) else None
        ids = [str(item.get("id") or item.get("name") or "") for item in items or [] if isinstance(item, dict)]
        return [model for model in ids if model]

    def first_model(self) -> str:
        """The model the upstream lists first, asked once; for upstreams configured without a model id."""
        with self._lock:
            if self._first_model is None:
                ids = self.models()
                if not ids:
                    raise InternalError(f"the upstream at {self.display} lists no models; set upstream_model")
                self._first_model = ids[0]
                log.info("upstream %s: using its first model %s", self.display, ids[0])
            return self._first_model

    def stream(self, path: str, body: dict[str, Any], decode: Decoder,
               on_done: Callable[[], None] | None = None) -> Exchange:
        """Start POSTing ``body`` to ``path`` on a thread; ``decode`` turns the response into items."""
        return Exchange(self, path, body, decode, on_done)

    def close(self) -> None:
        self.http.close()


class Exchange:
    """One streamed upstream answer being read on its own thread into a queue.

    :meth:`wait_started` raises the upstream's refusal if it came within the wait;
    :meth:`items` yields decoded items, None when ``ping_interval`` passes in silence, and raises
    ApiError where the upstream failed. :meth:`close` stops reading and drops the connection.
    """

    def __init__(self, client: UpstreamClient, path: str, body: dict[str, Any], decode: Decoder,
                 on_done: Callable[[], None] | None = None) -> None:
        self.client = client
        self.path = path
        self.started_at = time.perf_counter()
        self.first_item_at: float | None = None
        self._decode = decode
        self._on_done = on_done
        self._body = body
        self._queue: queue.Queue[Any] = queue.Queue()
        self._answered = threading.Event()  # headers arrived, or the request failed
        self._failure: ApiError | None = None
        self._stop = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pensieve-upstream", daemon=True)
        self._thread.start()

    # -- the reading thread ----------------------------------------------------------------------
    def _run(self) -> None:
        client = self.client
        try:
            with client.http.stream("POST", client.url(self.path), json=self._body) as response:
                if response.status_code >= 400:
                    response.read()
                    client._check(response, self.path)
                self._answered.set()
                self._queue.put(_STARTED)
                for item in self._decode(response):
                    if self._stop.is_set():
                        return
                    self._queue.put(item)
            self._queue.put(_END)
        except ApiError as exc:
            self._fail(exc)
        except httpx.TransportError as exc:
            self._fail(errors.from_transport(exc, client.display, client.read_timeout))
        except Exception as exc:  # noqa: BLE001 - whatever breaks, the client gets an error event
            log.exception("reading from the upstream at %s failed", client.display)
            self._fail(InternalError(f"reading from the upstream at {client.display} failed "
                                     f"({type(exc).__name__})"))
        finally:
            self.done.set()
            if self._on_done is not None:
                self._on_done()

    def _fail(self, error: ApiError) -> None:
        if not self._stop.is_set():
            log.warning("upstream %s %s: %s", self.client.display, self.path, error.message)
        if not self._answered.is_set():
            self._failure = error
            self._answered.set()
        self._queue.put(error)

    # -- the HTTP worker's side ------------------------------------------------------------------
    def wait_started(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the upstream's status; raise its refusal if that is what came."""
        self._answered.wait(timeout)
        if self._failure is not None:
            self.close()
            raise self._failure

    def items(self, ping_interval: float | None = None) -> Iterator[Any]:
        while True:
            try:
                item = self._queue.get(timeout=ping_interval)
            except queue.Empty:
                yield None
                continue
            if item is _STARTED:
                continue
            if item is _END:
                return
            if isinstance(item, ApiError):
                raise item
            if self.first_item_at is None:
                self.first_item_at = time.perf_counter()
            yield item

    def close(self) -> None:
        """Stop reading; the thread drops the connection at its next item (the upstream then stops)."""
        self._stop.set()


class UpstreamDataError(InternalError):
    """The upstream's answer is not what the protocol allows: bytes that are not UTF-8, text that is not
    valid Unicode, data that is not JSON. The client gets a clean ``api_error``; the log gets one line."""


_EOL = re.compile(rb"\r\n|\r|\n")


def utf8_lines(chunks: Iterable[bytes], url: str) -> Iterator[str]:
    """Lines (CR, LF or CRLF) of a byte stream, each strict UTF-8; httpx's own lines would hide bad bytes as U+FFFD.

    Splitting bytes is safe: no byte of a multi-byte UTF-8 character is CR or LF.
    """
    buffer = b""
    for data in chunks:
        buffer += data
        start = 0
        for match in _EOL.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # perhaps the first half of a CRLF split across reads
            yield _utf8(buffer[start:match.start()], url)
            start = match.end()
        buffer = buffer[start:]
    if buffer:
        yield _utf8(buffer.rstrip(b"\r"), url)


def _utf8(line: bytes, url: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UpstreamDataError(f"the upstream at {url} sent bytes that are not valid UTF-8 ({exc.reason} at "
                                f"byte {exc.start}: {line[max(0, exc.start - 20):exc.start + 20]!r})") from None


def printable(text: str) -> str:
    """Upstream text for an error message or the log: any lone surrogate written as its escape, never raised on."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _no_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def upstream_json(data: str | bytes, url: str, what: str = "data") -> Any:
    """Decoded JSON from the upstream, or UpstreamDataError: not JSON, NaN, or a lone surrogate (invalid Unicode)."""
    try:
        value = json.loads(data, parse_constant=_no_json_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        shown = data[:200] if isinstance(data, str) else data[:200].decode("utf-8", "replace")
        raise UpstreamDataError(f"the upstream at {url} sent {what} that is not valid JSON "
                                f"({type(exc).__name__}: {str(exc)[:200]}): {ascii(shown)}") from None
    found = find_lone_surrogate(value)
    if found is not None:
        loc, text, index = found
        where = ".".join(str(part) for part in loc) or "the top level"
        raise UpstreamDataError(f"the upstream at {url} sent text that is not valid Unicode: a lone surrogate "
                                f"U+{ord(text[index]):04X} in {ascii(where)[1:-1][:200]}")
    return value


def _whole_object(response: httpx.Response, url: str) -> dict[str, Any]:
    value = upstream_json(response.read(), url, "an answer")
    if not isinstance(value, dict):
        raise UpstreamDataError(f"the upstream at {url} answered with JSON that is not an object "
                                f"({type(value).__name__})")
    return value


def openai_chunks(url: str) -> Decoder:
    """Decoder of a Chat Completions stream into chunk dicts (a plain JSON answer becomes one chunk)."""
    from pensieve_server.upstream.translate import UpstreamStreamError, response_as_chunk

    def decode(response: httpx.Response) -> Iterator[dict[str, Any]]:
        if response.headers.get("content-type", "").startswith("application/json"):
            yield response_as_chunk(_whole_object(response, url))
            return
        finished = False
        for event, data in sse_events(utf8_lines(response.iter_bytes(), url)):
            if data.strip() == "[DONE]":
                return
            if event == "error":
                raise UpstreamStreamError(f"the upstream at {url} failed mid-answer: "
                                          f"{printable(errors.upstream_message(data))}")
            if not data.strip():
                continue
            chunk = upstream_json(data, url, "a stream event")
            if not isinstance(chunk, dict):
                continue
            choices = chunk.get("choices") if isinstance(chunk.get("choices"), list) else []
            finished = finished or any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
            yield chunk
        if not finished:
            raise InternalError(f"the upstream at {url} ended the stream before the answer was complete")

    return decode


def anthropic_events(url: str) -> Decoder:
    """Decoder of an Anthropic Messages stream into ``(event_type, data)`` pairs."""

    def decode(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
        if response.headers.get("content-type", "").startswith("application/json"):
            yield "message", _whole_object(response, url)
            return
        for event, data in sse_events(utf8_lines(response.iter_bytes(), url)):
            if not data.strip():
                continue
            if event == "error" and not data.lstrip().startswith("{"):
                raise InternalError(f"the upstream at {url} failed mid-answer: {printable(data.strip()[:500])}")
            payload = upstream_json(data, url, "a stream event")
            if isinstance(payload, dict):
                kind = payload.get("type") if event == "message" else event
                yield str(kind), payload
                if kind == "message_stop":
                    return
        raise InternalError(f"the upstream at {url} ended the stream before the answer was complete")

    return decode
