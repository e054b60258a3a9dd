"""Pensieve's own cost per generated token: long decodes against the raw engine, with a sampling profile.

    python benchmarks/decode_profile.py [--max-tokens 1024] [--requests 3] [--py-spy PATH] [--out DIR]

On a GPU a small model decodes hundreds of tokens per second, so Pensieve's per-token work (HTTP,
SSE, stop handling, scheduling) can cap the throughput where on a CPU it hides behind the engine.
This runs the same long-decode prompt on ``raw-llamacpp`` and ``pensieve-llamacpp`` (the same
contenders as benchmarks/run.py) alternately, reports the decode rates and the milliseconds per
token Pensieve adds, and, with ``--py-spy``, samples the server while it decodes and lists the
functions that take its time. Writes ``decode-profile.json`` (and the raw py-spy stacks) to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import signal
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.contenders import Context, PensieveLlamaCpp, RawLlamaCpp  # noqa: E402
from benchmarks.run import embedded_gguf, log, prompt_builder  # noqa: E402
from benchmarks.workloads import salt_for  # noqa: E402

# Greedy decoding of this prompt runs long on SmolLM2 (it keeps counting) instead of stopping early.
SYSTEM = "You are a patient teacher who never stops early."
USER = "Count from 1 to 2000, one number per line, with no other words."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=1024, help="output tokens per request (default 1024)")
    parser.add_argument("--requests", type=int, default=3, help="long requests per contender (default 3)")
    parser.add_argument("--py-spy", help="py-spy binary: sample the Pensieve server during its long decodes")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--profile-streams", type=int, default=1,
                        help="concurrent long requests while py-spy samples (default 1)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / ".work", help="where to write results")
    return parser.parse_args(argv)


def self_time(stacks: Path, top: int = 25) -> list[dict[str, Any]]:
    """The functions with the most samples at the top of the stack, from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        names = frames.split(";")
        own[names[-1]] += n
        for name in set(names):
            inclusive[name] += n
    return [{"function": name, "self_share": n / total, "inclusive_share": inclusive[name] / total}
            for name, n in own.most_common(top)] if total else []


def start_py_spy(binary: str, pid: int, out: Path, seconds: int, rate: int) -> subprocess.Popen:
    """Sample the busy threads of ``pid`` for ``seconds`` (idle waits are left out)."""
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate),
                             "--format", "raw", "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # `finally` stops the servers
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = embedded_gguf()
    builder = prompt_builder(gguf, args.max_tokens)
    work = REPO / "benchmarks" / ".work" / dt.datetime.now().strftime("profile-%Y%m%d-%H%M%S")
    ctx = Context(repo=REPO, work_dir=work, gguf=gguf, count=builder.count)
    raw, pensieve = RawLlamaCpp(ctx), PensieveLlamaCpp(ctx)
    base = builder.build("long-decode", SYSTEM, USER)
    rates: dict[str, list[float]] = {raw.name: [], pensieve.name: []}
    tokens: dict[str, list[int]] = {raw.name: [], pensieve.name: []}
    profile: list[dict[str, Any]] = []
    try:
        for contender in (raw, pensieve):
            contender.start()
            contender.complete(builder.salted(base, salt_for("profile-warmup")), "warmup", 0)
        for rep in range(args.requests):
            for contender in (raw, pensieve) if rep % 2 == 0 else (pensieve, raw):
                sample = contender.complete(builder.salted(base, salt_for("profile", rep)), "long-decode", rep)
                log(f"  {contender.name:18} #{rep}: {sample.output_tokens} tokens, decode {sample.decode_tps or 0:.1f} "
                    f"tok/s{'  ' + sample.error if sample.error else ''}")
                if sample.decode_tps:
                    rates[contender.name].append(sample.decode_tps)
                    tokens[contender.name].append(sample.output_tokens)
        if args.py_spy and pensieve.proc is not None:
            stacks = args.out / "decode-profile-stacks.txt"
            seconds = 20
            spy = start_py_spy(args.py_spy, pensieve.proc.pid, stacks, seconds, args.rate)
            stop = threading.Event()
            threading.Timer(seconds, stop.set).start()
            done: list[int] = []

            def keep_asking(stream: int) -> None:
                rep = 0
                while not stop.is_set():
                    sample = pensieve.complete(builder.salted(base, salt_for("profiled", stream, rep)), "profiled", rep)
                    done.append(sample.output_tokens)
                    rep += 1

            workers = [threading.Thread(target=keep_asking, args=(i,)) for i in range(args.profile_streams)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            log(f"profiled: {args.profile_streams} stream(s), {sum(done)} tokens in about {seconds} s")
            _, err = spy.communicate(timeout=60)
            if stacks.is_file():
                profile = self_time(stacks)
            else:
                log(f"py-spy wrote nothing: {err.strip()[-400:]}")
    finally:
        raw.stop()
        pensieve.stop()
    result = summarize(rates, tokens, args)
    result["profile_top_self_time"] = profile
    path = args.out / "decode-profile.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    log(json.dumps({k: v for k, v in result.items() if k != "profile_top_self_time"}, indent=2))
    for row in profile[:15]:
        log(f"  {row['self_share']:6.1%} self {row['inclusive_share']:6.1%} incl  {row['function']}")
    log(f"wrote {path}")
    return 0


def summarize(rates: dict[str, list[float]], tokens: dict[str, list[int]], args: argparse.Namespace) -> dict[str, Any]:
    raw, pensieve = (statistics.median(rates[name]) if rates[name] else None for name in rates)
    result: dict[str, Any] = {"max_tokens": args.max_tokens, "requests": args.requests, "decode_tps": rates,
                              "output_tokens": tokens, "median_decode_tps": {}, "ratio": None,
                              "pensieve_ms_per_token_added": None}
    names = list(rates)
    result["median_decode_tps"] = {names[0]: raw, names[1]: pensieve}
    if raw and pensieve:
        result["ratio"] = pensieve / raw
        result["pensieve_ms_per_token_added"] = 1000 / pensieve - 1000 / raw
    return result


if __name__ == "__main__":
    sys.exit(main())
