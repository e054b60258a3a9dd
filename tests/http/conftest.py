"""A real Waitress server with a scripted model, shared by the protocol conformance tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pensieve_server.engine.scripted import ScriptedBackend
from tests.serverutil import RunningServer, running_server


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def server(scripted: ScriptedBackend) -> Iterator[RunningServer]:
    with running_server({"scripted": scripted}) as running:
        yield running


@pytest.fixture
def client(server: RunningServer):
    import anthropic

    return anthropic.Anthropic(base_url=server.base_url, api_key=server.token, max_retries=0)
