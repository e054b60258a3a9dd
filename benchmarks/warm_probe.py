"""The captured Claude Code request cold, then warm after several pauses: where a warm turn's time goes.

    python benchmarks/warm_probe.py [--gaps 0,0.6,2] [--env PENSIEVE_DISK_CACHE_BYTES=0] [--repo PATH]

Starts the real ``pensieve serve --engine llamacpp --parallel 4`` (from ``--repo``: another checkout to
compare) in a fresh PENSIEVE_HOME at log level info, sends a short warm-up, the captured request cold, then
the same request with a new ``cch=`` after each pause (Claude Code's next turn arrives at any moment after the
last one ended, also while the server works in the background). Prints each request's time to first token as
the client saw it next to the server's own request-log line (prepare, queue, prefill), so a slow warm turn
shows where its time went. ``--restart`` adds the same request on a restarted server (its state read from disk);
``--py-spy`` records each server (native frames); ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.clients import anthropic_stream  # noqa: E402
from benchmarks.contenders import LOOPBACK, child_env, free_port  # noqa: E402
from benchmarks.restart import wait_for_saved_state  # noqa: E402
from benchmarks.workloads import CapturedRequest, find_fixture, load_captured, replay_request  # noqa: E402

TOKEN = "warm-probe-token"
LOG_LINE = re.compile(r"request (\S+) .*?prompt=(\d+) cached=(\d+) disk=(\d+) .*?(?:prepare=([\d.]+)s )?"
                      r"queue=([\d.]+)s prefill=([\d.]+)s ttft=([\d.]+)s")


def start_server(repo: Path, home: Path, port: int, extra_env: dict[str, str], log: Path,
                 level: str = "info") -> subprocess.Popen[bytes]:
    env = child_env({"PENSIEVE_HOME": str(home), "PENSIEVE_AUTH_TOKEN": TOKEN, **extra_env}, repo=repo)
    command = [sys.executable, "-m", "pensieve_cli.main", "serve", "--engine", "llamacpp", "--host", LOOPBACK,
               "--port", str(port), "--parallel", "4", "--log-level", level]
    with log.open("ab") as handle:
        proc = subprocess.Popen(command, cwd=repo, env=env, stdout=handle, stderr=handle, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server was not ready after 300 s")


def server_line(log: Path, request_id: str) -> dict[str, Any]:
    """The request-log figures of ``request_id`` (waits briefly: the line is written at the request's end)."""
    for _ in range(50):
        for line in log.read_text(errors="replace").splitlines():
            match = LOG_LINE.search(line)
            if match and match.group(1) == request_id:
                names = ("prompt", "cached", "disk", "prepare_s", "queue_s", "prefill_s", "ttft_s")
                return {name: float(value) if value is not None else None
                        for name, value in zip(names, match.groups()[1:], strict=True)}
        time.sleep(0.1)
    return {}


def send(client: httpx.Client, body: dict[str, Any], path: str, headers: dict[str, str]) -> tuple[float | None, str]:
    """Client-side TTFT and the request id the server gave (its `request-id` response header)."""
    request_ids: list[str] = []

    def hook(response: httpx.Response) -> None:
        request_ids.append(response.headers.get("request-id", ""))

    client.event_hooks["response"] = [hook]
    times = anthropic_stream(client, path, headers, body)
    if times.error:
        raise SystemExit(f"request failed: {times.error}")
    ttft = None if times.first is None else times.first - times.start
    return ttft, request_ids[0] if request_ids else ""


def spy_on(proc: subprocess.Popen[bytes], out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``proc`` (native frames, every thread, idle ones too) into ``out``; None without."""
    if out is None:
        return None
    spy = subprocess.Popen(["py-spy", "record", "-p", str(proc.pid), "-o", str(out), "-f", "raw", "-r", "200",
                            "--threads", "--idle", "--native"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the first timed request
    return spy


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


class Probe:
    """One server process at a time on one PENSIEVE_HOME, and the rows of the requests sent to it."""

    def __init__(self, args: argparse.Namespace, work: Path, captured: CapturedRequest) -> None:
        self.args, self.captured = args, captured
        self.home, self.log = work / "home", work / "server.log"
        self.extra = dict(item.split("=", 1) for item in args.env)
        self.rows: list[dict[str, Any]] = []
        self.sent = 0

    def serve(self, spy_out: Path | None, steps: list[tuple[str, float]]) -> None:
        """Start a server, warm it up (model load), then replay the capture after each pause in ``steps``."""
        port = free_port()
        proc = start_server(self.args.repo.resolve(), self.home, port, self.extra, self.log, self.args.log_level)
        spy = None
        try:
            with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=600) as client:
                warmup = {"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": True,
                          "messages": [{"role": "user", "content": "Hello"}]}
                send(client, warmup, "/v1/messages", {"x-api-key": TOKEN})
                spy = spy_on(proc, spy_out)
                for label, gap in steps:
                    time.sleep(gap)
                    self.replay(client, label, gap)
        finally:
            stop(spy, signal.SIGINT)
            stop(proc)

    def replay(self, client: httpx.Client, label: str, gap: float) -> None:
        self.sent += 1
        request = replay_request(self.captured, f"probe{self.sent:03d}", TOKEN, self.args.max_tokens)
        ttft, request_id = send(client, request.body, request.path, request.headers)
        row = {"label": label, "gap_s": gap, "client_ttft_s": ttft, **server_line(self.log, request_id)}
        self.rows.append(row)
        print(f"{label:22} client TTFT {ttft:.3f} s | server " +
              " ".join(f"{k}={v:g}" for k, v in row.items()
                       if k not in ("label", "gap_s", "client_ttft_s") and v is not None), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose server runs (default: this one)")
    parser.add_argument("--gaps", default="0,0.6,2", help="pauses in seconds before each warm request")
    parser.add_argument("--restart", action="store_true",
                        help="then restart the server on the same home and replay once more (a state from disk)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--log-level", default="info", choices=("debug", "info"), help="the server's")
    parser.add_argument("--keep-log", type=Path, help="copy the server's log here")
    parser.add_argument("--py-spy", type=Path, help="record each server with py-spy (raw) over the timed requests")
    args = parser.parse_args()
    fixture = find_fixture(REPO)
    if fixture is None:
        raise SystemExit("no captured Claude Code request in tests/fixtures/claude-code/")
    gaps = [float(g) for g in args.gaps.split(",") if g.strip()]
    with tempfile.TemporaryDirectory(prefix="warm-probe-") as work:
        probe = Probe(args, Path(work), load_captured(fixture))
        try:
            probe.serve(args.py_spy, [("cold", 0.0)] + [(f"warm after {gap:g} s", gap) for gap in gaps])
            if args.restart:
                saved = wait_for_saved_state(probe.home, set())
                print(f"a state on disk before the restart: {saved}", flush=True)
                spy_out = args.py_spy.with_name(args.py_spy.name + "-restart") if args.py_spy else None
                probe.serve(spy_out, [("after a restart", 0.0)])
        finally:
            if args.keep_log:
                args.keep_log.write_bytes(probe.log.read_bytes())
    if args.json:
        args.json.write_text(json.dumps({"env": probe.extra, "repo": str(args.repo), "rows": probe.rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
