"""Pensieve's own ceiling for concurrent streams: the real server with llama.cpp's compute taken out.

    python benchmarks/overhead.py [--streams 1,4,8] [--max-tokens 512] [--rounds 3]
        [--server NAME=REPO ...] [--real-decode] [--py-spy DIR] [--out FILE.json]

Each server is the real ``pensieve serve --engine llamacpp --parallel 4`` (Waitress, Flask, the
service, the BatchScheduler, LlamaCppBatchBackend and the embedded model) running REPO's code in a
process of its own, with one change: ``llama_decode`` returns at once, without computing, whenever
the logits of the last real decode still serve the step (a pure decode step no wider than it).
Sampling, detokenizing, stop checks, the stream parser, SSE and the HTTP writes all still run, so
the aggregate output tok/s measured here is what Pensieve itself can carry: the most it could give
on any accelerator. A prefill still decodes for real (the end-of-generation tokens' logits are then
set to -inf, so every stream runs to max_tokens); positions skipped by free steps are closed up in
the KV cache first (``llama_memory_seq_add``), so llama.cpp accepts the batch. ``--real-decode``
leaves llama_decode alone: the same harness then measures the real thing (on a GPU).

Clients run in this process (httpx threads through benchmarks/clients.py, as benchmarks/run.py does):
for each stream count, every server in turn (the order alternates each round, so A/B pairs see the
same machine). Aggregate = all output tokens / wall time; "decode" = tokens after each stream's
first / (last delta of any stream - first delta of any). The server also reports its engine steps
per run (steps, tokens per step, time inside ``step()``, CPU per thread), asked for through a file.

Several ``--server NAME=REPO`` (e.g. a ``git worktree`` of the commit before a change) compare code
versions in one run; ``--native-log-servers`` swaps llama-cpp-python's Python log callback for a native no-op
in the servers it names. ``--py-spy DIR`` records each server (``py-spy record --idle --threads``,
collapsed stacks) while ``--profile-streams`` streams run, after the measured rounds.
"""

from __future__ import annotations

import sys

CHILD = "--serve-child" in sys.argv
if CHILD:  # the server's code comes from PYTHONPATH (its REPO), never from this checkout
    import llama_cpp  # noqa: F401 - before numpy, as `pensieve serve` does (a CUDA build crashed the other way)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if not CHILD and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOKEN = "overhead-benchmark-token"
MODEL = "claude-sonnet-4-5"  # any claude-* name: answered by the embedded model


# -- the server process ------------------------------------------------------------------------------

class FreeDecode:
    """``llama_decode`` that computes only when the last real decode's logits cannot serve the step."""

    def __init__(self, lib: Any, backend: Any) -> None:
        import numpy as np

        self.lib, self.real = lib, lib.llama_decode
        self.vocab = backend._llama.n_vocab()
        self.stops = np.array(sorted(backend._stop_tokens), dtype=np.int64)
        self.prefix = 0  # leading rows of the last real decode that have logits
        self.free = self.computed = 0
        self.computed_s = 0.0

    def __call__(self, ctx: Any, batch: Any) -> int:
        n = batch.n_tokens
        flags = batch.logits
        if n <= self.prefix and all(flags[i] for i in range(n)):
            self.free += 1
            return 0
        started = time.perf_counter()
        self._close_gaps(ctx, batch, n)
        status = self.real(ctx, batch)
        self.computed_s += time.perf_counter() - started
        if status == 0:
            self.computed += 1
            rows = sum(1 for i in range(n) if flags[i])
            prefix = 0
            while prefix < n and flags[prefix]:
                prefix += 1
            self.prefix = prefix
            if rows and len(self.stops):
                import numpy as np

                logits = np.ctypeslib.as_array(self.lib.llama_get_logits(ctx), shape=(rows, self.vocab))
                logits[:, self.stops] = -np.inf
        return status

    def _close_gaps(self, ctx: Any, batch: Any, n: int) -> None:
        """Free steps left no KV cells: shift each sequence's cells up to the batch's first position."""
        lib = self.lib
        first: dict[int, int] = {}
        for i in range(n):
            first.setdefault(batch.seq_id[i][0], batch.pos[i])
        memory = lib.llama_get_memory(ctx)
        for seq, pos in first.items():
            last = lib.llama_memory_seq_pos_max(memory, seq)
            if last >= 0 and last + 1 != pos:
                lib.llama_memory_seq_add(memory, seq, -1, -1, pos - 1 - last)


class StepStats:
    """The engine's steps since the last report: count, tokens sampled, time inside step()."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()
        self.reports = 0
        self.cpu: dict[str, float] = {}
        self.real: tuple[int, float] = (0, 0.0)  # FreeDecode's real decodes and their seconds, at the last report
        self.keep_alive: Any = None  # the counting log callback (--count-log), alive as long as llama.cpp may call it

    def reset(self) -> None:
        self.log_counts: dict[str, int] = {}
        self.steps = self.tokens = self.free_steps = 0
        self.busy = self.free_busy = 0.0
        self.first = self.last = None

    def record(self, started: float, ended: float, tokens: int, free: bool) -> None:
        with self.lock:
            self.steps += 1
            self.tokens += tokens
            self.busy += ended - started
            if free:
                self.free_steps += 1
                self.free_busy += ended - started
            self.first = started if self.first is None else self.first
            self.last = ended

    def report(self, path: Path, decode: FreeDecode | None) -> None:
        cpu = thread_cpu()
        since = {k: v - self.cpu.get(k, 0.0) for k, v in cpu.items()}
        self.cpu = cpu
        with self.lock:
            span = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
            self.reports += 1
            real = (decode.computed, decode.computed_s) if decode else (0, 0.0)
            data = {"report": self.reports, "steps": self.steps, "tokens": self.tokens, "busy_s": self.busy,
                    "span_s": span, "free_steps": self.free_steps, "free_busy_s": self.free_busy,
                    "real_decodes": real[0] - self.real[0], "real_decode_s": real[1] - self.real[1], "cpu_s": since,
                    "log_messages": dict(sorted(self.log_counts.items(), key=lambda kv: -kv[1])[:8])}
            self.real = real
            self.reset()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) each kind of thread of this process has used: engine, HTTP workers
    (waitress-N), Waitress's main loop, the rest."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), "other")
        kind = ("engine" if name.startswith("engine") else "http" if name.startswith("waitress")
                else "main" if name == "MainThread" else "other")
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def silence_llama_log() -> None:
    """llama.cpp and ggml log through a native no-op instead of llama-cpp-python's Python callback, which
    takes the GIL for every message; ggml-cuda logs one on every CUDA graph reuse, inside llama_decode.
    The no-op is libc's ``abs``: it reads one int register and touches nothing (the C callers clean up)."""
    import ctypes

    import llama_cpp

    noop = ctypes.cast(ctypes.CDLL(None).abs, ctypes.c_void_p).value
    llama_cpp.llama_log_set(llama_cpp.llama_log_callback(noop), ctypes.c_void_p(0))
    print("llama.cpp log: native no-op", flush=True)


def count_llama_log(stats: StepStats) -> None:
    """llama-cpp-python's Python log callback replaced by one that counts messages (digits masked) into
    ``stats``: which messages reach Python, and how many per engine step (the GIL question above)."""
    import ctypes
    import re

    import llama_cpp

    @llama_cpp.llama_log_callback
    def counting(level: int, text: bytes, user_data: Any) -> None:
        key = f"{level}:" + re.sub(r"\d+", "#", text.decode(errors="replace").strip())[:80]
        with stats.lock:
            stats.log_counts[key] = stats.log_counts.get(key, 0) + 1

    stats.keep_alive = counting
    llama_cpp._logger.llama_log_callback = counting  # what a load puts back (pensieve_server.engine.llamacpp_log)
    llama_cpp.llama_log_set(counting, ctypes.c_void_p(0))


def serve_child(args: argparse.Namespace) -> int:
    """``pensieve serve`` in this process, its backend's llama_decode made free (unless --real-decode)."""
    import types

    from pensieve_cli.main import main as pensieve_main
    from pensieve_server.engine import llamacpp_batch

    backend_class = llamacpp_batch.LlamaCppBatchBackend
    stats, decoders = StepStats(), []
    original_init, original_step = backend_class.__init__, backend_class.step

    def init(self: Any, *a: Any, **kw: Any) -> None:
        original_init(self, *a, **kw)
        if not args.real_decode:
            decode = FreeDecode(self._lib, self)
            lib = types.ModuleType("llama_cpp_free_decode")
            lib.__dict__.update(vars(self._lib))
            lib.llama_decode = decode
            self._lib = lib
            decoders.append(decode)

    def step(self: Any) -> Any:
        decode = self._lib.llama_decode
        free = getattr(decode, "free", 0)
        started = time.perf_counter()
        out = original_step(self)
        stats.record(started, time.perf_counter(), sum(1 for s in out.values() if s is not None),
                     getattr(decode, "free", 0) > free)
        return out

    backend_class.__init__, backend_class.step = init, step
    if args.native_log:
        silence_llama_log()
    elif args.count_log:
        count_llama_log(stats)
    request = args.stats.with_suffix(".request")

    def answer_requests() -> None:  # a file, not a signal: a signal waits for the main thread's select()
        asked = 0
        while True:
            try:
                wanted = int(request.read_text() or 0)
            except (OSError, ValueError):
                wanted = asked
            if wanted > asked:
                asked = wanted
                stats.report(args.stats, decoders[-1] if decoders else None)
            time.sleep(0.02)

    threading.Thread(target=answer_requests, name="overhead-stats", daemon=True).start()
    import pensieve_server

    print(f"serving {pensieve_server.__file__} (free decode: {not args.real_decode})", flush=True)
    return pensieve_main(["serve", "--engine", "llamacpp", "--host", "127.0.0.1", "--port", str(args.port),
                          "--parallel", "4", *args.serve_args.split()])


# -- the clients ----------------------------------------------------------------------------------------

class Server:
    def __init__(self, name: str, repo: Path, args: argparse.Namespace, work: Path) -> None:
        from benchmarks.contenders import child_env, free_port

        self.name, self.repo, self.port = name, repo, free_port()
        self.stats = work / f"{name}-stats.json"
        self.log = work / f"{name}-server.log"
        for stale in (self.stats, self.stats.with_suffix(".request")):
            stale.unlink(missing_ok=True)
        env = child_env({"PENSIEVE_HOME": str(work / f"{name}-home"), "PENSIEVE_AUTH_TOKEN": TOKEN,
                         "PYTHONUNBUFFERED": "1"}, repo=repo)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-child", "--port", str(self.port),
               "--stats", str(self.stats), "--serve-args", args.serve_args]
        if args.real_decode:
            cmd.append("--real-decode")
        if name in args.native_log_servers.split(","):
            cmd.append("--native-log")
        elif args.count_log:
            cmd.append("--count-log")
        self.proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        self.reports = self.asked = 0

    def wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: server exited {self.proc.returncode}: "
                                 f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise SystemExit(f"{self.name}: not ready after {timeout:.0f} s")

    def step_report(self) -> dict[str, Any]:
        """The server's engine steps since the last report (it resets them)."""
        self.asked += 1
        self.stats.with_suffix(".request").write_text(str(self.asked))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                data = json.loads(self.stats.read_text())
                if data["report"] > self.reports:
                    self.reports = data["report"]
                    return data
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        print(f"{self.name}: no step report within 30 s", file=sys.stderr)
        return {}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_streams(server: Server, streams: int, max_tokens: int, salt: str, temperature: float = 0.0) -> dict[str, Any]:
    """``streams`` streaming requests at once; aggregate = output tokens / wall."""
    import httpx

    from benchmarks.clients import anthropic_stream

    headers = {"x-api-key": TOKEN, "anthropic-version": "2023-06-01"}
    results: list[Any] = [None] * streams
    gate = threading.Barrier(streams + 1)
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=httpx.Timeout(300.0, connect=10.0),
                          limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

    def one(index: int) -> None:
        body = {"model": MODEL, "max_tokens": max_tokens, "temperature": temperature, "stream": True,
                "system": "You are a helpful assistant.",
                "messages": [{"role": "user", "content": f"Session {salt}-{index}. Count from one to a thousand, "
                              "in words, one number per line."}]}
        gate.wait()
        results[index] = anthropic_stream(client, "/v1/messages", headers, body)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    server.step_report()  # resets the server's step counters
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    steps = server.step_report()
    client.close()
    ok = [t for t in results if t is not None and t.error is None and t.first is not None]
    errors = [t.error for t in results if t is not None and t.error is not None]
    tokens = sum(t.output_tokens or 0 for t in ok)
    firsts, lasts = [t.first for t in ok], [t.last for t in ok if t.last is not None]
    span = (max(lasts) - min(firsts)) if ok and lasts else 0.0
    after_first = sum(max((t.output_tokens or 0) - 1, 0) for t in ok)
    # With free decodes, the seconds left once the real ones (prefills) are taken out are Pensieve's own.
    own = wall - (steps.get("real_decode_s") or 0.0)
    return {"server": server.name, "streams": streams, "wall_s": wall, "output_tokens": tokens,
            "aggregate_tps": tokens / wall if wall else None, "own_tps": tokens / own if own > 0 else None, "decode_tps": after_first / span if span else None,
            "deltas": sum(t.deltas for t in ok), "ttft_ms": statistics.median([(t.first - t.start) * 1000 for t in ok])
            if ok else None, "errors": errors, "steps": steps}


def profile(server: Server, streams: int, max_tokens: int, out: Path, seconds: float, gil: bool = False) -> Path:
    """py-spy's collapsed stacks of the server while ``streams`` streams run, for ``seconds`` (``gil``:
    only the thread holding the GIL, so where Python's one lock goes, else every thread, idle or not)."""
    path = out / f"{server.name}-{streams}streams{'-gil' if gil else ''}.txt"
    mode = ["--gil"] if gil else ["--idle"]
    spy = subprocess.Popen(["py-spy", "record", *mode, "--threads", "--rate", "250", "--format", "raw",
                            "--duration", str(int(seconds)), "--pid", str(server.proc.pid), "--output", str(path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline and spy.poll() is None:
        run_streams(server, streams, max_tokens, f"profile-{n}")
        n += 1
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0:
        print(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}", file=sys.stderr)
    return path


def fmt(row: dict[str, Any]) -> str:
    steps = row.get("steps") or {}
    per_step = (steps.get("tokens", 0) / steps["steps"]) if steps.get("steps") else 0.0
    busy = (steps.get("busy_s", 0.0) * 1000 / steps["steps"]) if steps.get("steps") else 0.0
    free = (steps.get("free_busy_s", 0.0) * 1000 / steps["free_steps"]) if steps.get("free_steps") else 0.0
    return (f"{row['server']:>10} {row['streams']} streams: {row['aggregate_tps'] or 0:8.1f} tok/s aggregate, "
            f"{row['decode_tps'] or 0:8.1f} decode, {row['own_tps'] or 0:8.1f} without real decodes, {row['output_tokens']} tokens in {row['deltas']} deltas, "
            f"{row['wall_s']:.2f} s; engine {steps.get('steps', 0)} steps, {per_step:.2f} tok/step, "
            f"{busy:.3f} ms in step() ({free:.3f} free ones; {steps.get('real_decodes') or 0} real decodes "
            f"{steps.get('real_decode_s') or 0:.2f} s), busy {steps.get('busy_s', 0) / row['wall_s'] * 100 if row['wall_s'] else 0:.0f}%"
            + "; cpu ms/token " + " ".join(f"{k} {v * 1000 / max(row['output_tokens'], 1):.3f}"
                                            for k, v in sorted((steps.get("cpu_s") or {}).items()))
            + (f"; {len(row['errors'])} errors: {row['errors'][0]}" if row["errors"] else "")
            + (f"; llama.cpp messages to Python: {steps['log_messages']}" if steps.get("log_messages") else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", action="append", default=[], metavar="NAME=REPO",
                        help="a server running REPO's code (repeat to compare; default: this checkout)")
    parser.add_argument("--real-decode", action="store_true", help="leave llama_decode alone (measure a GPU for real)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="the requests' temperature (0: greedy; Claude Code sends none, so it gets 0.2)")
    parser.add_argument("--serve-args", default="", help="extra `pensieve serve` flags, one string")
    parser.add_argument("--native-log-servers", default="", metavar="NAME,...",
                        help="these servers log llama.cpp through a native no-op, not llama-cpp-python's Python "
                             "callback (a GIL taken inside every CUDA llama_decode?): give one REPO two names to A/B it")
    parser.add_argument("--native-log", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count-log", action="store_true",
                        help="servers count the llama.cpp messages that reach Python (per step, in each row)")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="record each server with py-spy into DIR")
    parser.add_argument("--profile-streams", type=int, default=4)
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--profile-gil", action="store_true", help="py-spy samples only the GIL's holder")
    parser.add_argument("--out", type=Path, help="write every row as JSON here")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".work" / "overhead")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_child:
        return serve_child(args)
    args.work.mkdir(parents=True, exist_ok=True)
    specs = [s.split("=", 1) for s in args.server] or [["this", str(REPO)]]
    servers = [Server(name, Path(repo).resolve(), args, args.work) for name, repo in specs]
    rows: list[dict[str, Any]] = []
    try:
        for server in servers:
            server.wait_ready()
            for streams in (1, 4):  # warm up: model load, first prefills, code paths
                print("warm-up " + fmt(run_streams(server, streams, 64, f"warm-{streams}")), flush=True)
        counts = [int(s) for s in args.streams.split(",")]
        for rnd in range(args.rounds):
            for streams in counts:
                order = servers if (rnd + streams) % 2 == 0 else servers[::-1]
                for server in order:
                    row = run_streams(server, streams, args.max_tokens, f"r{rnd}-s{streams}", args.temperature)
                    row["round"] = rnd
                    rows.append(row)
                    print(fmt(row), flush=True)
        print("\nmedians (aggregate tok/s; decode tok/s; without real decodes):")
        for server in servers:
            line = []
            for streams in counts:
                mine = [r for r in rows if r["server"] == server.name and r["streams"] == streams]
                agg, dec, own = (statistics.median([r[k] or 0 for r in mine])
                                 for k in ("aggregate_tps", "decode_tps", "own_tps"))
                line.append(f"{streams}: {agg:7.1f} ({dec:7.1f}; {own:7.1f})")
            print(f"  {server.name:>10}  " + "   ".join(line), flush=True)
        if args.py_spy:
            args.py_spy.mkdir(parents=True, exist_ok=True)
            for server in servers:
                path = profile(server, args.profile_streams, args.max_tokens, args.py_spy, args.profile_seconds,
                               args.profile_gil)
                print(f"py-spy: {path}", flush=True)
    finally:
        for server in servers:
            server.stop()
    if args.out:
        args.out.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
