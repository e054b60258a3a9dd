"""Worker process for the raw-engine contenders: the inference library in-process, timed directly.

Run by :mod:`benchmarks.contenders` as ``python -m benchmarks.raw_engine --engine llamacpp|mlx``.
It loads the model, prints ``{"ready": ...}`` and then answers one JSON line per JSON request line
on stdin: ``{"op": "complete", "text", "max_tokens", "workload", "rep"}`` → a Sample,
``{"op": "batch", "texts", "max_tokens"}`` → the engine's own batched decode of all texts at once
(its concurrency ceiling: no HTTP, no threads), and ``{"op": "rss"}`` → its own peak RSS. Running in
its own process keeps its peak RSS its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from benchmarks.clients import Sample
from benchmarks.machine import own_peak_rss_bytes


class LlamaCppEngine:
    """llama-cpp-python: ``Llama(...).create_completion(prompt_tokens, stream=True, temperature=0)``."""

    def __init__(self, model: str, threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama, llama_supports_gpu_offload

        # Every layer on the GPU when the build has one (as Pensieve does); 0 on a CPU-only build.
        self.llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         n_gpu_layers=-1 if llama_supports_gpu_offload() else 0, verbose=False)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def tokens(self, prompt: list[int], max_tokens: int) -> Iterator[int]:
        """Yields 1 for each generated token (the final bookkeeping chunk yields 0)."""
        self.llm.reset()  # no prefix reuse: every prompt is prefilled in full
        stream = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0,
                                            repeat_penalty=1.0, stream=True)
        for chunk in stream:
            choice = chunk["choices"][0]
            yield 1 if choice.get("finish_reason") is None or choice.get("text") else 0

    def batch(self, prompts: list[list[int]], max_tokens: int) -> tuple[int, float]:
        """Decode every prompt together in one context (one sequence each, greedy): output tokens, seconds.

        The prompts are prefilled one by one, then each ``llama_decode`` carries the next token of
        every unfinished sequence: llama.cpp's batched decoding with nothing around it. The clock
        starts once the context exists.
        """
        import ctypes

        import llama_cpp
        import numpy as np

        n = len(prompts)
        params = self.llm.context_params
        params.n_ctx = (max(map(len, prompts)) + max_tokens + 16) * n
        params.n_seq_max, params.kv_unified = n, False
        params.n_batch = params.n_ubatch = max(512, n)
        ctx = llama_cpp.llama_init_from_model(self.llm.model, params)
        batch = llama_cpp.llama_batch_init(max(512, *map(len, prompts)), 0, 1)
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

        def decode(rows: list[tuple[int, int, int, bool]]) -> list[int]:
            """rows: (sequence, position, token, wants logits); the greedy next token of each row that wants them."""
            for i, (seq, pos, token, wanted) in enumerate(rows):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, int(wanted)
            batch.n_tokens = len(rows)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            return [int(np.ctypeslib.as_array(ctypes.cast(llama_cpp.llama_get_logits_ith(ctx, i),
                                                          ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).argmax())
                    for i, row in enumerate(rows) if row[3]]

        try:
            start = time.perf_counter()
            nexts = [decode([(seq, i, token, i == len(prompt) - 1) for i, token in enumerate(prompt)])[0]
                     for seq, prompt in enumerate(prompts)]
            positions = [len(prompt) for prompt in prompts]
            live = {seq for seq in range(n) if not llama_cpp.llama_vocab_is_eog(vocab, nexts[seq])}
            produced = len(live)
            for _ in range(max_tokens - 1):
                if not live:
                    break
                order = sorted(live)
                sampled = decode([(seq, positions[seq], nexts[seq], True) for seq in order])
                for seq, token in zip(order, sampled, strict=True):
                    positions[seq] += 1
                    nexts[seq] = token
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        live.discard(seq)
                    else:
                        produced += 1
            return produced, time.perf_counter() - start
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)


class MlxEngine:
    """mlx-lm: ``stream_generate`` (greedy by default) on the MLX conversion of the same GGUF."""

    def __init__(self, folder: str) -> None:
        from mlx_lm import load

        self.model, self.tokenizer = load(folder)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def tokens(self, prompt: list[int], max_tokens: int) -> Iterator[int]:
        from mlx_lm import stream_generate

        for response in stream_generate(self.model, self.tokenizer, prompt, max_tokens=max_tokens):
            yield 0 if response.finish_reason == "stop" else 1  # the EOS step is not a visible token

    def batch(self, prompts: list[list[int]], max_tokens: int) -> tuple[int, float]:
        """mlx-lm's own ``batch_generate`` (its BatchGenerator, greedy): output tokens, seconds."""
        from mlx_lm import batch_generate

        start = time.perf_counter()
        response = batch_generate(self.model, self.tokenizer, prompts, max_tokens=max_tokens, return_token_ids=True)
        return sum(len(ids) for ids in response.token_ids or []), time.perf_counter() - start


def timed_batch(engine: LlamaCppEngine | MlxEngine, request: dict[str, Any]) -> dict[str, Any]:
    """All texts decoded together by the engine itself: its wall time and output tokens."""
    prompts = [engine.tokenize(text) for text in request["texts"]]
    try:
        tokens, seconds = engine.batch(prompts, int(request["max_tokens"]))
    except Exception as exc:  # reported, not raised: the run goes on
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"wall_s": seconds, "output_tokens": tokens}


def timed_completion(engine: LlamaCppEngine | MlxEngine, request: dict[str, Any]) -> Sample:
    """Tokenize (untimed), then time the first and last generated token from the call."""
    prompt = engine.tokenize(request["text"])
    sample = Sample(workload=request.get("workload", ""), rep=int(request.get("rep", 0)), prompt_tokens=len(prompt))
    start = time.perf_counter()
    first = last = None
    try:
        for produced in engine.tokens(prompt, int(request["max_tokens"])):
            if produced:
                now = time.perf_counter()
                first = now if first is None else first
                last = now
                sample.output_tokens += produced
                sample.deltas += 1
    except Exception as exc:  # reported, not raised: the run goes on
        sample.error = f"{type(exc).__name__}: {exc}"
    sample.total_s = time.perf_counter() - start
    if first is not None and last is not None:
        sample.ttft_s, sample.decode_s = first - start, last - first
    elif sample.error is None:
        sample.error = "no token was generated"
    return sample


def serve(engine: LlamaCppEngine | MlxEngine, requests: TextIO, replies: TextIO) -> None:
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "rss":
            reply: dict[str, Any] = {"peak_rss_bytes": own_peak_rss_bytes()}
        elif request.get("op") == "batch":
            reply = timed_batch(engine, request)
        else:
            reply = timed_completion(engine, request).to_json()
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=("llamacpp", "mlx"), required=True)
    parser.add_argument("--model", required=True, help="GGUF file (llamacpp) or MLX folder (mlx)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-ctx", type=int, default=8192)
    args = parser.parse_args(argv)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library chatter must not corrupt the protocol
    started = time.perf_counter()
    try:
        engine = (LlamaCppEngine(args.model, args.threads, args.n_ctx) if args.engine == "llamacpp"
                  else MlxEngine(args.model))
    except Exception as exc:  # becomes the contender's skip reason
        replies.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        replies.flush()
        return 1
    replies.write(json.dumps({"ready": True, "load_s": time.perf_counter() - started}) + "\n")
    replies.flush()
    serve(engine, sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
