"""A finished request's prefix state goes to the disk once the engine is idle, not before the next request.

Copying a state out of llama.cpp takes a while (~135 MB for Claude Code's prompt on the embedded model:
0.3 s here), and the next request used to wait for it: the first warm turn after a cold one. Real
batched llama.cpp, embedded model, a real disk store.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pensieve_server.engine import scheduler as scheduler_module
from pensieve_server.engine.base import Completion, SamplingParams
from pensieve_server.engine.disk_states import SUFFIX, DiskStates
from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
from pensieve_server.engine.scheduler import make_scheduler
from pensieve_server.models.store import ModelStore

pytestmark = pytest.mark.slow
RULES = " ".join(f"Rule {i}: a careful assistant checks item {i} twice before it answers." for i in range(45))


def chat(question: str) -> str:
    return (f"<|im_start|>system\nYou are a helpful assistant. {RULES}<|im_end|>\n"
            f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


def test_the_next_request_goes_before_the_finished_ones_state_is_copied_out(
        model_store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "IDLE_WORK_AFTER_S", 5.0)
    entry = model_store.embedded()
    backend = LlamaCppBatchBackend.load_batched(entry, parallel=2, context_length=2048)
    identity = backend.disk_identity(entry.weights)
    assert identity is not None
    disk = DiskStates(tmp_path / "states", identity, 512 * 1024**2, min_tokens=256, save_step=256)
    backend.attach_disk(disk)
    events: list[str] = []
    admit, offer = backend.admit, backend._offer_slot_to_disk
    monkeypatch.setattr(backend, "admit", lambda *a: (events.append("admit"), admit(*a))[1])
    monkeypatch.setattr(backend, "_offer_slot_to_disk", lambda slot: (events.append("offer"), offer(slot))[1])
    scheduler = make_scheduler(backend, queue_size=4)
    try:
        params = SamplingParams(max_tokens=4, temperature=0.0)
        for question in ("What is two plus two?", "Name a colour of the sky."):
            done = list(scheduler.submit(backend.tokenize(chat(question)), params).iter_events(timeout=300))
            assert isinstance(done[-1], Completion)
        assert events == ["admit", "admit"], "no state was copied out between the two requests"
        deadline = time.monotonic() + 120
        while not list((tmp_path / "states").rglob("*" + SUFFIX)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert events[2:] == ["offer"], "once idle, the finished slot's state was offered to the disk"
        assert list((tmp_path / "states").rglob("*" + SUFFIX)), "and written"
    finally:
        scheduler.close()
        backend.close()
