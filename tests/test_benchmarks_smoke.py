"""The benchmark harness on fake numbers and a fake tokenizer: no server, no timing checks.

It keeps ``benchmarks/`` from rotting silently: plan building, the Claude Code replay rewrite, the
streaming parsers and the report (figures, targets, Markdown, JSON) all run here; the raw-engine
worker and the MLX weights it gets run on the real embedded model, with a few tokens each.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from benchmarks import contenders, machine, report
from benchmarks.clients import Sample, anthropic_stream, openai_stream
from benchmarks.workloads import (
    CapturedRequest,
    PromptBuilder,
    build_plan,
    chatml,
    find_fixture,
    load_captured,
    replay_request,
    salt_for,
    with_cch,
)

REPO = Path(__file__).resolve().parent.parent


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def builder() -> PromptBuilder:
    return PromptBuilder(chatml, words, max_tokens=64)


def test_plan_is_deterministic_and_sized(builder: PromptBuilder) -> None:
    plan = build_plan(builder, quick=False)
    again = build_plan(builder, quick=False)
    assert [p.text for p in plan.chat_prompts] == [p.text for p in again.chat_prompts]
    assert [p.key for p in plan.chat_prompts] == ["short", "sweep-512", "sweep-2048", "sweep-6000"]
    for prompt, target in zip(plan.sweep, (512, 2048, 6000), strict=True):
        salted = builder.salted(prompt, salt_for(prompt.key, 0))
        assert target <= salted.prompt_tokens <= target + 40
    assert plan.concurrency == (1, 4, 8) and plan.repetitions == 3 and plan.replay


def test_salts_defeat_prefix_reuse_but_keep_the_length(builder: PromptBuilder) -> None:
    plan = build_plan(builder, quick=True)
    a, b = (builder.salted(plan.short, salt_for("short", rep)) for rep in (0, 1))
    assert a.text != b.text and a.prompt_tokens == b.prompt_tokens
    assert a.text.index(salt_for("short", 0)) < 30  # at the very start: nothing after it is shared
    assert a.user == plan.short.user


def test_quick_plan_gives_mlx_only_the_short_chat(builder: PromptBuilder) -> None:
    plan = build_plan(builder, quick=True)
    assert [p.key for p in plan.chat_prompts] == ["short", "sweep-512"] and plan.concurrency == (1, 4)
    mlx = plan.for_engine("mlx", quick=True)
    assert [p.key for p in mlx.chat_prompts] == ["short"] and not mlx.concurrency and not mlx.replay
    assert plan.for_engine("llamacpp", quick=True) == plan
    full = build_plan(builder, quick=False)
    assert full.for_engine("mlx", quick=False).repetitions == 1 and full.for_engine("mlx", False).sweep == full.sweep
    capped = full.for_engine("mlx", False, mlx_max_prompt=512)
    assert [p.key for p in capped.chat_prompts] == ["short", "sweep-512"] and not capped.replay
    assert capped.concurrency == full.concurrency and full.for_engine("llamacpp", False, mlx_max_prompt=512) == full


def test_replay_rewrites_cch_token_and_max_tokens() -> None:
    fixture = find_fixture(REPO)
    captured = load_captured(fixture) if fixture else CapturedRequest(
        "/v1/messages?beta=true", {"Host": "x", "Authorization": "Bearer tok", "x-app": "cli"},
        {"system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cc_entrypoint=cli;"}],
         "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64000, "stream": True})
    cold, warm = (replay_request(captured, cch, "bench", 64) for cch in ("aaaaa", "bbbbb"))
    assert cold.body["max_tokens"] == 64 and cold.body["stream"] is True
    assert "cch=aaaaa;" in cold.body["system"][0]["text"] and "cch=bbbbb;" in warm.body["system"][0]["text"]
    assert cold.body["messages"] == captured.body["messages"] == warm.body["messages"]
    assert cold.headers["Authorization"] == "Bearer bench"
    assert not {"host", "content-length"} & {k.lower() for k in cold.headers}
    assert captured.body["max_tokens"] != 64 or fixture is None  # the capture itself is untouched


def test_with_cch_replaces_an_existing_value() -> None:
    assert with_cch("x-anthropic-billing-header: a=1; cch=00000;", "12345") == "x-anthropic-billing-header: a=1; cch=12345;"
    assert with_cch("x-anthropic-billing-header: a=1;", "12345") == "x-anthropic-billing-header: a=1; cch=12345;"


def _sse(events: list[tuple[str | None, dict | str]]) -> bytes:
    out = []
    for event, data in events:
        out.append((f"event: {event}\n" if event else "") + f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n")
    return "".join(out).encode()


def test_anthropic_stream_reads_deltas_and_usage() -> None:
    body = _sse([
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 40, "cache_read_input_tokens": 7,
                                                                            "output_tokens": 1}}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hel"}}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "lo"}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ])
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body)), base_url="http://t")
    times = anthropic_stream(client, "/v1/messages", {}, {})
    sample = times.sample("short", 0, prompt_tokens=999, output_tokens=999)
    assert (times.text, sample.prompt_tokens, sample.cached_tokens, sample.output_tokens) == ("Hello", 40, 7, 2)
    assert sample.ok and sample.ttft_s is not None and sample.decode_s is not None


def test_openai_stream_handles_both_shapes_and_errors() -> None:
    body = _sse([(None, {"choices": [{"text": "a"}]}), (None, {"choices": [{"delta": {"content": "b"}}]}),
                 (None, {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 2}}), (None, "[DONE]")])
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body)), base_url="http://t")
    times = openai_stream(client, "/v1/completions", {})
    assert (times.text, times.input_tokens, times.output_tokens, times.deltas) == ("ab", 30, 2, 2)
    failing = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(503, text="busy")), base_url="http://t")
    sample = openai_stream(failing, "/v1/completions", {}).sample("short", 0, 10, 0)
    assert not sample.ok and "503" in (sample.error or "")


def _sample(workload: str, ttft: float, decode_tps: float, prompt: int, rep: int = 0, cached: int = 0) -> dict:
    return Sample(workload, rep, ttft_s=ttft, decode_s=63 / decode_tps, total_s=ttft + 63 / decode_tps,
                  prompt_tokens=prompt, cached_tokens=cached, output_tokens=64, deltas=64).to_json()


def _contender(kind: str, engine: str, speed: float, replay: bool = False, concurrency: bool = True) -> dict:
    prompts = {"short": 43, "sweep-512": 519, "sweep-2048": 2059, "sweep-6000": 6000}
    samples = [_sample(key, 0.02 + n / (1000 * speed), 150 * speed, n, rep) for key, n in prompts.items() for rep in range(3)]
    result = {"kind": kind, "engine": engine, "description": f"fake {kind}", "status": "ok", "reason": None,
              "samples": samples, "concurrency": [], "replay": None, "notes": ["fake"], "startup_s": 1.5,
              "peak_rss_bytes": 300 * 2**20}
    if concurrency and kind != "raw":
        result["concurrency"] = [{"streams": n, "aggregate_tps": 100 * speed * min(n, 2.5), "wall_s": 1.0}
                                 for n in (1, 4, 8)]
    if replay:
        result["replay"] = {"cold": _sample("claude-code-cold", 6.0, 120, 7900),
                            "warm": _sample("claude-code-warm", 0.3, 120, 12, cached=7888)}
    return result


def fake_run(builder: PromptBuilder) -> dict:
    plan = build_plan(builder, quick=False)
    return {
        "schema": 1, "date": "2030-01-01", "started_at": "2030-01-01T00:00:00+00:00", "duration_s": 12.0,
        "command": "python benchmarks/run.py", "quick": False, "plan": plan.describe(), "notes": ["fake numbers"],
        "machine": machine.describe(REPO, "smoke-test"),
        "contenders": {
            "raw-llamacpp": _contender("raw", "llamacpp", 1.0),
            "pensieve-llamacpp": _contender("pensieve", "llamacpp", 0.99, replay=True),
            "llama-cpp-server": _contender("peer", "llamacpp", 0.9),
            "raw-mlx": _contender("raw", "mlx", 0.1),
            "pensieve-mlx": {"kind": "pensieve", "engine": "mlx", "status": "skipped", "reason": "no MLX here",
                             "description": "fake"},
            "mlx-lm-server": _contender("peer", "mlx", 0.1),
        },
    }


def test_report_on_fake_numbers(builder: PromptBuilder, tmp_path: Path) -> None:
    run = fake_run(builder)
    summary = report.summarize(run)
    assert set(summary["overhead"]) == {"pensieve-llamacpp vs raw-llamacpp"}
    assert set(summary["peers"]) == {"pensieve-llamacpp vs llama-cpp-server"}
    rows = summary["overhead"]["pensieve-llamacpp vs raw-llamacpp"]
    assert [r["workload"] for r in rows] == ["short", "sweep-512", "sweep-2048", "sweep-6000"]
    assert all(r["decode_ratio"] == pytest.approx(0.99) for r in rows)
    marks = {(t["name"], t["subject"]): t["met"] for t in summary["targets"]}
    assert marks[("warm Claude Code TTFT ≤ 10% of cold", "pensieve-llamacpp")] is True
    assert marks[("4 concurrent ≥ 2× single-stream aggregate", "pensieve-llamacpp")] is True
    assert marks[("decode ≥ 0.95× raw llama-cpp-python", "pensieve-llamacpp vs raw-llamacpp")] is True
    assert marks[("decode ≥ 1.0× peer", "pensieve-llamacpp vs llama-cpp-server")] is True
    md_path, json_path = report.write_reports(run, tmp_path)
    markdown = md_path.read_text()
    assert md_path.name == "2030-01-01-smoke-test.md" and json_path.name == "2030-01-01-smoke-test.json"
    for heading in ("## Machine", "## Contenders", "## Targets", "## Single requests", "## Pensieve overhead",
                    "## Pensieve vs peers", "## Claude Code request replayed", "## Concurrent streams"):
        assert heading in markdown
    assert "skipped: no MLX here" in markdown
    assert json.loads(json_path.read_text())["summary"]["targets"]


def test_report_survives_failures_and_an_empty_run(builder: PromptBuilder, tmp_path: Path) -> None:
    run = fake_run(builder)
    failed = Sample("short", 0, error="HTTP 500: boom").to_json()
    run["contenders"]["pensieve-llamacpp"]["samples"] = [failed]
    run["contenders"]["pensieve-llamacpp"]["replay"] = {"cold": failed, "warm": failed}
    summary = report.summarize(run)
    assert any(t["met"] is None for t in summary["targets"])
    assert "1 failed" in report.render_markdown(run, summary)
    run["contenders"] = {}
    run["quick"] = True
    md_path, _ = report.write_reports(run, tmp_path)
    assert md_path.name.endswith("-quick.md") and "No target could be checked" in md_path.read_text()


def test_contender_registry_and_cli_contract() -> None:
    assert list(contenders.CONTENDERS) == ["raw-llamacpp", "pensieve-llamacpp", "llama-cpp-server",
                                           "raw-mlx", "pensieve-mlx", "mlx-lm-server"]
    assert all(cls.engine in ("llamacpp", "mlx") for cls in contenders.CONTENDERS.values())
    assert 0 < contenders.free_port() < 65536
    info = machine.describe(REPO)
    assert {"cpu", "logical_cores", "ram_bytes", "os", "python", "versions", "git"} <= set(info)


@pytest.mark.slow
def test_mlx_contenders_get_pensieves_conversion(tmp_path: Path) -> None:
    import mlx.core as mx

    from pensieve_server.engine.devices import mlx_gpu as mlx_device

    folder, why = contenders.resolve_mlx_folder(tmp_path)
    assert why == "" and folder is not None and (folder / "config.json").is_file()
    if mlx_device() == "cpu":  # the same float32 weights Pensieve computes with there
        tensors = {name: t for path in folder.glob("*.safetensors") for name, t in mx.load(str(path)).items()}
        assert tensors and not [n for n, t in tensors.items() if t.dtype in (mx.float16, mx.bfloat16)]
        assert contenders.resolve_mlx_folder(tmp_path)[0] == folder  # made once, then reused


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["llamacpp", "mlx"])
def test_raw_engine_worker_completes_and_batches_on_the_real_model(engine: str, tmp_path: Path) -> None:
    """The raw-engine worker's protocol: ready, one timed completion, one batched decode of two prompts."""
    import subprocess
    import sys

    from pensieve_server.models.embedded import embedded_gguf_path

    model = contenders.resolve_mlx_folder(tmp_path)[0] if engine == "mlx" else embedded_gguf_path()
    question = chatml([{"role": "user", "content": "What is the capital of France?"}])
    worker = subprocess.Popen([sys.executable, "-m", "benchmarks.raw_engine", "--engine", engine, "--model", str(model),
                               "--n-ctx", "2048"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert worker.stdin is not None and worker.stdout is not None

    def ask(request: dict) -> dict:
        worker.stdin.write(json.dumps(request) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    try:
        assert json.loads(worker.stdout.readline())["ready"] is True
        sample = Sample.from_json(ask({"op": "complete", "text": question, "max_tokens": 6, "workload": "short"}))
        assert sample.ok and 0 < sample.output_tokens <= 6 and sample.prompt_tokens > 5
        batch = ask({"op": "batch", "texts": [question, question.replace("France", "England")], "max_tokens": 6})
        assert "error" not in batch and 2 <= batch["output_tokens"] <= 12 and batch["wall_s"] > 0
    finally:
        worker.stdin.close()
        worker.wait(30)


def test_restart_rows_in_the_report(builder: PromptBuilder) -> None:
    run = fake_run(builder)
    run["contenders"]["pensieve-llamacpp"]["restart"] = {
        "print": {"cold": _sample("restart-print-cold", 70.0, 100, 6094),
                  "restart": _sample("restart-print", 1.2, 100, 13, cached=6088), "saved": True},
        "interactive": {"cold": _sample("restart-interactive-cold", 80.0, 100, 7000),
                        "restart": _sample("restart-interactive", 6.0, 100, 500, cached=6500), "saved": True},
    }
    summary = report.summarize(run)
    marks = {(t["name"], t["subject"]): (t["met"], t["value"]) for t in summary["targets"]}
    assert marks[("print turn after a restart: TTFT ≤ 5% of cold", "pensieve-llamacpp")] == (True, "1.7% of cold")
    assert marks[("interactive turn after a restart: TTFT ≤ 5% of cold", "pensieve-llamacpp")] == (False, "7.5% of cold")
    markdown = report.render_markdown(run, summary)
    assert "## Claude Code after a server restart" in markdown and "| 13 / 6088 |" in markdown


def test_side_request_row_on_fake_numbers(builder: PromptBuilder, tmp_path: Path) -> None:
    """The side-request row: the captured pair with a new question in both, its figures, target and section."""
    from benchmarks.side_request import QUESTION, SIDE_MODEL, asking, side_fixtures

    pair = side_fixtures(REPO)
    assert pair is not None, "tests/fixtures/claude-code/interactive/ holds the captured side and main requests"
    side, main = pair
    assert side.body["tools"] == [] and len(main.body["tools"]) == 27
    changed = asking(main, "what is 2+7")
    assert QUESTION in json.dumps(main.body) and QUESTION not in json.dumps(changed.body)
    assert "what is 2+7" in json.dumps(changed.body) and changed.body["system"] == main.body["system"]
    assert SIDE_MODEL.startswith("claude-3-5-haiku")
    run = fake_run(builder)
    alone = [_sample("main-alone", 0.5, 100, 12, rep, cached=6000) for rep in range(3)]
    with_side = [_sample("main-with-side", 0.55, 90, 12, rep, cached=6000) for rep in range(3)]
    sides = [_sample("side", 0.4, 90, 30, rep, cached=350) for rep in range(3)]
    run["contenders"]["pensieve-llamacpp"]["side_request"] = {"alone": alone, "with_side": with_side,
                                                              "side": sides, "lead_ms": 5.0}
    summary = report.summarize(run)
    marks = {(t["name"], t["subject"]): t for t in summary["targets"]}
    target = marks[("main turn with its side request: TTFT ≤ 1.15× alone", "pensieve-llamacpp")]
    assert target["met"] is True and target["value"].startswith("1.10×")
    run["contenders"]["pensieve-llamacpp"]["side_request"]["with_side"] = [
        _sample("main-with-side", 2.0, 90, 12, rep, cached=6000) for rep in range(3)]
    summary = report.summarize(run)
    assert {t["name"]: t["met"] for t in summary["targets"]}["main turn with its side request: TTFT ≤ 1.15× alone"] is False
    md_path, _ = report.write_reports(run, tmp_path)
    assert "## A Claude Code turn with its side request" in md_path.read_text()
