"""Tool calls, structured output and decode speed with and without constrained decoding, on the embedded model.

    python benchmarks/tool_calls.py [--engine llamacpp|mlx] [--requests N] [--out benchmarks/results]

Runs Pensieve in-process (real Waitress server, the embedded SmolLM2-135M, greedy decoding) and
sends a fixed set of coding requests with Claude Code's real Bash, Read, Edit and Write definitions
(``tests/fixtures/claude-code/interactive/002``), once with constrained decoding off ("before": the
validate-after behaviour, by replacing the service's constraint with none) and once on ("after"):

- valid-call rate under ``tool_choice`` any: responses that are a tool_use whose input validates
  (jsonschema) against the tool's schema;
- under auto: the calls emitted, how many validate, and call attempts that degraded to text;
- the title side request (``003``, json_schema format) on several sessions: parse rate and output tokens;
- decode speed with the grammar active vs free, on the engine itself (same prompts, tokens/s after the
  first token, median of the runs).

Writes ``<out>/<YYYY-MM-DD>-tool-calls-<engine>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FIXTURES = REPO / "tests" / "fixtures" / "claude-code" / "interactive"
MAIN_TOOLS = ("Bash", "Read", "Edit", "Write")
CODING_REQUESTS = [
    "List the files in the current directory.",
    "Show me the contents of /repo/setup.py.",
    "Run the test suite with pytest.",
    "In /repo/app.py replace the word foo with bar.",
    "Create /repo/hello.txt containing the text hello.",
    "What does /repo/README.md say about installation?",
    "Check which git branch I am on.",
    "Rename the function load_data to read_data in /repo/data.py.",
    "Write a .gitignore file in /repo that ignores __pycache__.",
    "Find all TODO comments in the repository.",
    "Read the first 20 lines of /repo/main.py.",
    "Install the requests package with pip.",
    "Fix the typo 'recieve' to 'receive' in /repo/net.py.",
    "Create /repo/tests/test_math.py with a test that 1 + 1 == 2.",
    "Show the last 5 git commits.",
    "Open /repo/config.toml.",
    "Count the lines of Python code in src/.",
    "Change the port from 8000 to 8080 in /repo/server.py.",
    "Write a Makefile in /repo with a test target that runs pytest.",
    "Show the disk usage of the current directory.",
    "Read /repo/pyproject.toml and tell me the project name.",
    "Delete the build directory.",
]
TOOL_MAX_TOKENS = 96  # a Bash/Read/Edit/Write call of these tasks takes 25-60 tokens
TITLE_SESSIONS = [
    "what is 2+2", "fix the failing login test", "add dark mode to the settings page",
    "why is my docker build slow", "refactor the payment module", "write a README for this repo",
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tools() -> list[dict[str, Any]]:
    body = json.loads((FIXTURES / "002-POST-v1_messages.json").read_text())["body"]
    return [tool for tool in body["tools"] if tool["name"] in MAIN_TOOLS]


def title_body(session: str) -> dict[str, Any]:
    body = json.loads((FIXTURES / "003-POST-v1_messages.json").read_text())["body"]
    text = body["messages"][0]["content"][0]["text"].replace("what is 2+2", session)
    return {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}], "stream": False}


class Server:
    """Pensieve in-process on the embedded model, with the service's constraint switchable off."""

    def __init__(self, engine: str, home: Path) -> None:
        os.environ["PENSIEVE_HOME"] = str(home)
        from pensieve_server.app import create_app
        from pensieve_server.engine.pool import ModelPool
        from pensieve_server.models.embedded import EMBEDDED_NAME
        from pensieve_server.models.store import ModelStore
        from pensieve_server.providers import local
        from pensieve_server.runner import build_server
        from pensieve_server.settings import load_settings

        self._provider = local  # where the local provider asks for a request's constraint
        self._constraint = local.request_constraint
        settings = load_settings({"engine": engine, "auth_token": "bench", "port": 0}).replace(
            default_model=EMBEDDED_NAME, temperature=0.0)
        self.pool = ModelPool(settings, ModelStore(settings.paths.models_dir))
        self.model = self.pool.get(EMBEDDED_NAME)
        self._server = build_server(create_app(settings, self.pool), settings, port=0)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.effective_port}"

    def constrained(self, on: bool) -> None:
        self._provider.request_constraint = self._constraint if on else (lambda *_a, **_k: None)

    def close(self) -> None:
        from pensieve_server.runner import stop_server

        stop_server(self._server)
        self._thread.join(timeout=5)
        self.pool.close()


def post(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/messages", json=body)
    response.raise_for_status()
    return response.json()


def tool_round(client: Any, choice: str, requests: list[str], schemas: dict[str, Any]) -> dict[str, Any]:
    import jsonschema

    valid = responses_with_call = calls = valid_calls = attempts_as_text = 0
    for text in requests:
        message = post(client, {"model": "claude-sonnet-4-5", "max_tokens": TOOL_MAX_TOKENS, "tools": tools(),
                                "tool_choice": {"type": choice}, "messages": [{"role": "user", "content": text}]})
        uses = [block for block in message["content"] if block["type"] == "tool_use"]
        ok = []
        for use in uses:
            try:
                jsonschema.validate(use["input"], schemas[use["name"]])
                ok.append(use)
            except (jsonschema.ValidationError, KeyError):
                pass
        calls += len(uses)
        valid_calls += len(ok)
        responses_with_call += bool(uses)
        valid += bool(uses) and len(ok) == len(uses)
        attempts_as_text += sum("<tool_call>" in block.get("text", "") or '"arguments"' in block.get("text", "")
                                for block in message["content"] if block["type"] == "text")
    return {"requests": len(requests), "responses_with_valid_call": valid, "responses_with_call": responses_with_call,
            "calls": calls, "valid_calls": valid_calls, "call_attempts_left_as_text": attempts_as_text}


def title_round(client: Any) -> dict[str, Any]:
    parsed, tokens = 0, []
    for session in TITLE_SESSIONS:
        message = post(client, title_body(session))
        text = "".join(block.get("text", "") for block in message["content"] if block["type"] == "text")
        try:
            value = json.loads(text)
            parsed += isinstance(value, dict) and isinstance(value.get("title"), str)
        except ValueError:
            pass
        tokens.append(message["usage"]["output_tokens"])
    return {"requests": len(TITLE_SESSIONS), "parsed": parsed, "output_tokens_mean": round(statistics.mean(tokens), 1)}


def decode_speed(server: Server, runs: int) -> dict[str, Any]:
    """Tokens/s after the first token, engine only: a forced Write call (long content) vs free text."""
    from pensieve_server.anthropic.constraints import tool_call_constraint
    from pensieve_server.anthropic.render import render_prompt
    from pensieve_server.anthropic.types import MessagesRequest
    from pensieve_server.engine.base import Completion, SamplingParams
    from pensieve_server.engine.generation import generate

    backend = server.model.backend
    write = [tool for tool in tools() if tool["name"] == "Write"]
    constraint = tool_call_constraint(write, {"type": "tool", "name": "Write", "disable_parallel_tool_use": True})
    rates: dict[str, list[float]] = {"free": [], "constrained": []}
    paired: list[float] = []
    for index in range(runs):
        request = MessagesRequest(model="m", max_tokens=64, tools=write, messages=[{"role": "user", "content": [
            {"type": "text", "text": f"Write a long poem about the sea, number {index}, to /repo/poem{index}.txt."}]}])
        prompt = backend.tokenize(render_prompt(request, backend.info))
        pair: dict[str, float] = {}
        for kind in ("free", "constrained") if index % 2 == 0 else ("constrained", "free"):
            params = SamplingParams(max_tokens=64, temperature=0.0, repeat_penalty=1.1,
                                    constraint=constraint if kind == "constrained" else None)
            done = [e for e in generate(backend, prompt, params) if isinstance(e, Completion)][0]
            if done.output_tokens > 8:
                rates[kind].append(done.decode_tokens_per_s)
                pair[kind] = done.decode_tokens_per_s
        if len(pair) == 2:
            paired.append(pair["constrained"] / pair["free"])
    free, constrained = statistics.median(rates["free"]), statistics.median(rates["constrained"])
    # Each run's two generations ran back to back: their ratio cancels most of a shared machine's drift.
    return {"runs": runs, "free_tok_s": round(free, 1), "constrained_tok_s": round(constrained, 1),
            "ratio": round(constrained / free, 3),
            "paired_ratio_median": round(statistics.median(paired), 3) if paired else None,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="llamacpp", choices=("llamacpp", "mlx"))
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--speed-runs", type=int, default=8)
    parser.add_argument("--rounds", default="any,title,speed,auto",
                        help="which rounds to run (any, title, speed, auto; default all)")
    parser.add_argument("--keep", action="store_true",
                        help="start from the day's saved result and replace only the rounds run now")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--note", help="where and how it ran (machine, pinning, load), printed under the title")
    args = parser.parse_args(argv)
    import httpx
    import jsonschema  # noqa: F401 - fail early when the validator is missing

    requests = CODING_REQUESTS[: args.requests]
    schemas = {tool["name"]: tool["input_schema"] for tool in tools()}
    started = time.perf_counter()
    result: dict[str, Any] = {"engine": args.engine, "model": "smollm2-135m (embedded, Q4_1)", "greedy": True,
                              "date": dt.date.today().isoformat()}
    saved = args.out / f"{result['date']}-tool-calls-{args.engine}.json"
    if args.keep and saved.is_file():
        result = {**json.loads(saved.read_text()), **result}
    if args.note:
        result["note"] = args.note
    wanted = {name.strip() for name in args.rounds.split(",")}
    with tempfile.TemporaryDirectory(prefix="pensieve-bench-") as home:
        server = Server(args.engine, Path(home))
        try:
            with httpx.Client(base_url=server.url, headers={"x-api-key": "bench"}, timeout=3600) as client:
                # Cheapest rounds first, results saved after each: a slow machine still reports what it measured.
                rounds = [("after", "any"), ("before", "any"), ("after", "title"), ("before", "title"),
                          ("speed", ""), ("after", "auto"), ("before", "auto")]
                for label, choice in rounds:
                    if (choice or "speed") not in wanted:
                        continue
                    log(f"{label}: {choice or 'decode speed'}")
                    if label == "speed":
                        server.constrained(True)
                        result["decode_speed"] = decode_speed(server, args.speed_runs)
                    else:
                        server.constrained(label == "after")
                        result[f"{label}_{choice}"] = (title_round(client) if choice == "title"
                                                       else tool_round(client, choice, requests, schemas))
                    result["wall_s"] = round(time.perf_counter() - started, 1)
                    save(args.out, result)
                    log(f"  {result.get(f'{label}_{choice}', result.get('decode_speed'))}")
        finally:
            server.close()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    save(args.out, result)
    print(render(result))
    return 0


def save(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{result['date']}-tool-calls-{result['engine']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render(result))


def render(result: dict[str, Any]) -> str:
    lines = [f"# Tool calls and structured output, {result['engine']}, {result['date']}", "",
             f"Model {result['model']}, greedy; Claude Code's Bash/Read/Edit/Write definitions. "
             f"Wall time {result.get('wall_s', '?')} s." + (f" {result['note']}" if result.get("note") else ""), "",
             "| | before (validate after) | after (constrained) |", "| --- | --- | --- |"]
    missing = {"responses_with_valid_call": "–", "requests": "–", "valid_calls": "–", "calls": "–",
               "call_attempts_left_as_text": "–", "parsed": "–"}
    for choice in ("any", "auto"):
        before, after = result.get(f"before_{choice}", missing), result.get(f"after_{choice}", missing)
        lines.append(f"| `{choice}`: responses with a valid call / requests | {before['responses_with_valid_call']}/"
                     f"{before['requests']} | {after['responses_with_valid_call']}/{after['requests']} |")
        lines.append(f"| `{choice}`: valid calls / calls emitted | {before['valid_calls']}/{before['calls']} | "
                     f"{after['valid_calls']}/{after['calls']} |")
        lines.append(f"| `{choice}`: call attempts left as text | {before['call_attempts_left_as_text']} | "
                     f"{after['call_attempts_left_as_text']} |")
    before, after = result.get("before_title", missing), result.get("after_title", missing)
    lines.append(f"| title json_schema: parsed / requests | {before['parsed']}/{before['requests']} | "
                 f"{after['parsed']}/{after['requests']} |")
    lines.append(f"| title json_schema: output tokens (mean) | {before.get('output_tokens_mean', '–')} | "
                 f"{after.get('output_tokens_mean', '–')} |")
    speed = result.get("decode_speed")
    if speed:
        lines += ["", f"Decode speed (engine, median of {speed['runs']}): free {speed['free_tok_s']} tok/s, "
                      f"constrained {speed['constrained_tok_s']} tok/s, ratio {speed['ratio']}"
                      + (f"; median of the runs' paired ratios {speed['paired_ratio_median']}, load average "
                         f"{speed['load_average']}" if speed.get("paired_ratio_median") is not None else "") + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
