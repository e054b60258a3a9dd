"""A Claude Code turn with its side request sent 5 ms before it, against the same turn alone.

Claude Code in interactive mode sends, 1-5 ms before each main request, a small request on the haiku
name (tools ``[]``, about 400 tokens: it asks for the session's title). Captured in
``tests/fixtures/claude-code/interactive/``: ``003`` is that side request, ``004`` the main request
it came with. Each repetition asks a new question ("what is 2+N"), in both, as the next turn of the
session would: the main request reuses the session's prefix and prefills only the new tail.

The row: the main request's time to first token and total time with the side request sent 5 ms
earlier, against the main request alone, alternating, medians over the repetitions. Target: with
the side request at most 1.15x alone (the side request must not hold up the turn).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clients import Sample, anthropic_stream
from benchmarks.workloads import CapturedRequest, load_captured, replay_request

INTERACTIVE = Path("tests/fixtures/claude-code/interactive")
SIDE, MAIN = "003-POST-v1_messages.json", "004-POST-v1_messages.json"
QUESTION = "what is 2+2"
SIDE_MODEL = "claude-3-5-haiku-latest"  # the haiku name `pensieve setup` gives Claude Code
SIDE_LEAD_S = 0.005
REPETITIONS = 3
MAX_SIDE_RATIO = 1.15


def side_fixtures(repo: Path) -> tuple[CapturedRequest, CapturedRequest] | None:
    """(side request, main request) as captured, or None when the fixtures are not there."""
    folder = repo / INTERACTIVE
    if not (folder / SIDE).is_file() or not (folder / MAIN).is_file():
        return None
    return load_captured(folder / SIDE), load_captured(folder / MAIN)


def asking(request: CapturedRequest, question: str) -> CapturedRequest:
    """The request with the captured user question replaced by ``question`` (in every text block)."""
    body = copy.deepcopy(request.body)
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = content.replace(QUESTION, question)
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and isinstance(block.get("text"), str):
                    block["text"] = block["text"].replace(QUESTION, question)
    return CapturedRequest(request.path, dict(request.headers), body)


def run_side_request(contender: Any, pair: tuple[CapturedRequest, CapturedRequest], token: str, max_tokens: int,
                     log: Any, repetitions: int = REPETITIONS) -> dict[str, Any]:
    """Warm the session's prefix, then ``repetitions`` x (main alone, side + main), each a new question."""
    side_captured, main_captured = pair

    def main_request(n: int, cch: str) -> CapturedRequest:
        return replay_request(asking(main_captured, f"what is 2+{n}"), cch, token, max_tokens)

    def side_request(n: int, cch: str) -> CapturedRequest:
        request = replay_request(asking(side_captured, f"what is 2+{n}"), cch, token, max_tokens)
        request.body["model"] = SIDE_MODEL
        return request

    def show(label: str, sample: Sample) -> dict[str, Any]:
        log(f"  {contender.name:18} {label}: TTFT {(sample.ttft_s or 0) * 1000:8.1f} ms, total "
            f"{(sample.total_s or 0) * 1000:8.1f} ms ({sample.prompt_tokens} prefilled, {sample.cached_tokens} cached)"
            + ("" if sample.ok else f" {sample.error}"))
        return sample.to_json()

    show("side-warmup", contender.replay(side_request(100, "5a5a5"), "side-warmup"))
    show("main-warmup", contender.replay(main_request(100, "6b6b6"), "main-warmup"))
    alone, together, sides = [], [], []
    for rep in range(repetitions):
        alone.append(show(f"main-alone#{rep}", contender.replay(main_request(2 * rep + 3, f"a{rep}a{rep}a"),
                                                                "main-alone")))
        n = 2 * rep + 4
        side_result: list[Sample] = []
        side = side_request(n, f"b{rep}b{rep}b")
        thread = threading.Thread(target=lambda request=side, out=side_result: out.append(
            contender.replay(request, "side")), daemon=True)
        thread.start()
        time.sleep(SIDE_LEAD_S)
        together.append(show(f"main-with-side#{rep}", contender.replay(main_request(n, f"c{rep}c{rep}c"),
                                                                       "main-with-side")))
        thread.join()
        sides.append(show(f"side#{rep}", side_result[0]))
    return {"alone": alone, "with_side": together, "side": sides, "lead_ms": SIDE_LEAD_S * 1000}


# -- report --------------------------------------------------------------------------------------------

def _median_ms(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] * 1000 for s in samples if s.get("error") is None and s.get(key) is not None]
    return statistics.median(values) if values else None


def side_request_figures(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if not row:
        return None
    figures: dict[str, Any] = {"lead_ms": row.get("lead_ms")}
    for label, key in (("ttft", "ttft_s"), ("total", "total_s")):
        alone, together = _median_ms(row["alone"], key), _median_ms(row["with_side"], key)
        figures[f"{label}_alone_ms"], figures[f"{label}_with_side_ms"] = alone, together
        figures[f"{label}_ratio"] = together / alone if alone and together is not None else None
    figures["side_ttft_ms"] = _median_ms(row["side"], "ttft_s")
    figures["errors"] = [s["error"] for s in row["alone"] + row["with_side"] + row["side"] if s.get("error")]
    return figures


def side_request_targets(name: str, figures: dict[str, Any] | None) -> list[tuple[str, str, str, bool | None]]:
    """(target, subject, measured, met): the main turn's TTFT with its side request against alone."""
    if figures is None:
        return []
    ratio = figures["ttft_ratio"]
    measured = "n/a" if ratio is None else f"{ratio:.2f}× (total {_x(figures['total_ratio'])})"
    return [("main turn with its side request: TTFT ≤ 1.15× alone", name, measured,
             None if ratio is None else ratio <= MAX_SIDE_RATIO)]


def side_request_section(all_figures: dict[str, dict[str, Any] | None]) -> list[str]:
    rows = []
    for name, fig in all_figures.items():
        if not fig:
            continue
        ratio = fig["ttft_ratio"]
        mark = "" if ratio is None else (" ✓" if ratio <= MAX_SIDE_RATIO else " ✗")
        rows.append(f"| `{name}` | {_ms(fig['ttft_alone_ms'])} | {_ms(fig['ttft_with_side_ms'])} | {_x(ratio)}{mark} | "
                    f"{_ms(fig['total_alone_ms'])} | {_ms(fig['total_with_side_ms'])} | {_x(fig['total_ratio'])} | "
                    f"{_ms(fig['side_ttft_ms'])} | {'; '.join(fig['errors'])} |")
    if not rows:
        return []
    return ["## A Claude Code turn with its side request (sent 5 ms before it) against the turn alone", "",
            "| contender | main TTFT alone ms | main TTFT with side ms | ratio (≤1.15×) | main total alone ms | "
            "main total with side ms | total ratio | side TTFT ms | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
            "The captured interactive session's next turn (`004`) and its title side request (`003`, sent on the "
            "haiku name), each repetition with a new question; medians. The server runs with its default settings.",
            ""]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


# -- in-process A/B: the scheduler's wait for requests still being prepared, on and off -----------------

class InProcess:
    """The contender interface run_side_request needs, over an in-process server (benchmarks/tool_calls.py)."""

    name = "pensieve-in-process"

    def __init__(self, server: Any) -> None:
        import httpx

        self.client = httpx.Client(base_url=server.url, timeout=3600)

    def replay(self, request: CapturedRequest, workload: str) -> Sample:
        times = anthropic_stream(self.client, request.path, request.headers, request.body)
        return times.sample(workload, 0, 0, times.deltas)


def main(argv: list[str] | None = None) -> int:
    """Alternate rounds with the scheduler's PREPARING_WAIT_S at its value and at 0 in one process
    (one cold prefill of the session's prefix serves both), medians per setting."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting (each: main alone, main + side)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, help="write the samples and medians here as JSON")
    args = parser.parse_args(argv)
    from benchmarks.tool_calls import REPO, Server
    from pensieve_server.engine import scheduler

    pair = side_fixtures(REPO)
    if pair is None:
        parser.error(f"fixtures not found under {REPO / INTERACTIVE}")
    settings = {"on": scheduler.PREPARING_WAIT_S, "off": 0.0}
    rows: dict[str, dict[str, list[Any]]] = {k: {"alone": [], "with_side": [], "side": []} for k in settings}
    with tempfile.TemporaryDirectory(prefix="pensieve-bench-") as home:
        server = Server("llamacpp", Path(home))
        try:
            contender = InProcess(server)
            for index in range(2 * args.rounds):
                label = "on" if index % 4 in (0, 3) else "off"  # on, off, off, on, ...: drift weighs on both
                scheduler.PREPARING_WAIT_S = settings[label]
                print(f"round {index} ({label}), load average {os.getloadavg()}", flush=True)
                row = run_side_request(contender, pair, "bench", args.max_tokens, print, repetitions=1)
                for key in ("alone", "with_side", "side"):
                    rows[label][key] += row[key]
        finally:
            server.close()
    result = {label: {"figures": side_request_figures({**row, "lead_ms": SIDE_LEAD_S * 1000}), "samples": row}
              for label, row in rows.items()}
    for label, entry in result.items():
        fig = entry["figures"]
        print(f"preparing wait {label}: main TTFT alone {_ms(fig['ttft_alone_ms'])} ms, with side "
              f"{_ms(fig['ttft_with_side_ms'])} ms, ratio {_x(fig['ttft_ratio'])}; side TTFT {_ms(fig['side_ttft_ms'])} ms")
    if args.out:
        args.out.write_text(json.dumps({"load_average_end": os.getloadavg(), **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
