"""Turn a run (machine, plan, samples) into figures, target checks, Markdown and JSON files.

Everything here works on plain dicts, so the smoke test can feed it fake numbers.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.clients import Sample
from benchmarks.restart import restart_figures, restart_section, restart_targets
from benchmarks.side_request import side_request_figures, side_request_section, side_request_targets

PAIRS = (("pensieve-llamacpp", "raw-llamacpp"), ("pensieve-mlx", "raw-mlx"))
PEERS = (("pensieve-llamacpp", "llama-cpp-server"), ("pensieve-mlx", "mlx-lm-server"))
MIN_RAW_RATIO = 0.95  # Pensieve ≥ 0.95× raw llama-cpp-python in prefill and decode
MAX_DECODE_OVERHEAD = 0.03
MAX_TTFT_DELTA_MS = 20.0
MAX_WARM_FRACTION = 0.10
MIN_CONCURRENT_SPEEDUP = 2.0
MIN_PEER_RATIO = 1.0
MET, MISSED, NA = "✅", "❌", "—"


# -- figures -------------------------------------------------------------------------------------------

def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def workload_figures(samples: list[Sample]) -> dict[str, Any]:
    """Medians over the successful repetitions of one workload."""
    ok = [s for s in samples if s.ok]
    ttft = _median(s.ttft_s for s in ok)
    return {
        "n": len(ok),
        "errors": [s.error for s in samples if not s.ok],
        "ttft_ms": None if ttft is None else ttft * 1000,
        "prefill_tps": _median(s.prefill_tps for s in ok),
        "decode_tps": _median(s.decode_tps for s in ok),
        "prompt_tokens": _median(s.prompt_tokens for s in ok),
        "cached_tokens": _median(s.cached_tokens for s in ok),
        "output_tokens": _median(s.output_tokens for s in ok),
    }


def contender_figures(result: dict[str, Any]) -> dict[str, Any]:
    samples = [Sample.from_json(s) for s in result.get("samples", [])]
    workloads: dict[str, list[Sample]] = {}
    for sample in samples:
        workloads.setdefault(sample.workload, []).append(sample)
    concurrency = {int(c["streams"]): c for c in result.get("concurrency", [])}
    single = (concurrency.get(1) or {}).get("aggregate_tps")
    return {
        "kind": result.get("kind", ""),
        "workloads": {name: workload_figures(group) for name, group in workloads.items()},
        "concurrency": {n: {"aggregate_tps": c.get("aggregate_tps"),
                            "speedup": _ratio(c.get("aggregate_tps"), single)} for n, c in sorted(concurrency.items())},
        "replay": replay_figures(result.get("replay")),
        "restart": restart_figures(result.get("restart")),
        "side_request": side_request_figures(result.get("side_request")),
    }


def _ttft_ms(sample: Sample) -> float | None:
    return sample.ttft_s * 1000 if sample.ok and sample.ttft_s is not None else None


def replay_figures(replay: dict[str, Any] | None) -> dict[str, Any] | None:
    if not replay:
        return None
    cold, warm = Sample.from_json(replay["cold"]), Sample.from_json(replay["warm"])
    return {
        "ttft_cold_ms": _ttft_ms(cold), "ttft_warm_ms": _ttft_ms(warm),
        "warm_fraction": _ratio(_ttft_ms(warm), _ttft_ms(cold)),
        "prefilled_cold": cold.prompt_tokens, "cache_read_cold": cold.cached_tokens,
        "prefilled_warm": warm.prompt_tokens, "cache_read_warm": warm.cached_tokens,
        "output_tokens_cold": cold.output_tokens, "output_tokens_warm": warm.output_tokens,
        "errors": [s.error for s in (cold, warm) if not s.ok],
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def compare(mine: dict[str, Any], other: dict[str, Any], workloads: list[str]) -> list[dict[str, Any]]:
    """Per workload: decode ratio, prefill ratio (mine / other), TTFT delta (ms) and TTFT ratio (other / mine)."""
    rows = []
    for name in workloads:
        a, b = mine["workloads"].get(name), other["workloads"].get(name)
        if not a or not b:
            continue
        rows.append({
            "workload": name,
            "decode_ratio": _ratio(a["decode_tps"], b["decode_tps"]),
            "prefill_ratio": _ratio(a["prefill_tps"], b["prefill_tps"]),
            "ttft_delta_ms": _delta(a["ttft_ms"], b["ttft_ms"]),
            "ttft_ratio": _ratio(b["ttft_ms"], a["ttft_ms"]),
        })
    return rows


# -- targets -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """One target from the brief, checked against one pair of contenders."""

    name: str
    subject: str
    value: str
    met: bool | None  # None: not measured

    @property
    def mark(self) -> str:
        return NA if self.met is None else (MET if self.met else MISSED)


def _worst(rows: list[dict[str, Any]], key: str, highest: bool = False) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return None
    return max(values) if highest else min(values)


def _check(value: float | None, ok: bool, text: str) -> tuple[str, bool | None]:
    return ("not measured", None) if value is None else (text, ok)


def raw_targets(subject: str, rows: list[dict[str, Any]], sweep: list[str]) -> list[Target]:
    """Overhead vs the raw engine: prefill judged on the sweep (≥512 tokens), decode/TTFT on all rows."""
    prefill = _worst([r for r in rows if r["workload"] in sweep], "prefill_ratio")
    decode = _worst(rows, "decode_ratio")
    ttft = _worst(rows, "ttft_delta_ms", highest=True)
    targets = []
    if subject.startswith("pensieve-llamacpp"):
        targets.append(Target("prefill ≥ 0.95× raw llama-cpp-python", subject,
                              *_check(prefill, (prefill or 0) >= MIN_RAW_RATIO, f"worst {_f(prefill, 3)}×")))
        targets.append(Target("decode ≥ 0.95× raw llama-cpp-python", subject,
                              *_check(decode, (decode or 0) >= MIN_RAW_RATIO, f"worst {_f(decode, 3)}×")))
    targets.append(Target("decode overhead ≤ 3%", subject,
                          *_check(decode, (decode or 0) >= 1 - MAX_DECODE_OVERHEAD,
                                  f"worst {_pct(None if decode is None else 1 - decode)}")))
    targets.append(Target("TTFT overhead ≤ 20 ms", subject,
                          *_check(ttft, (ttft if ttft is not None else 1e9) <= MAX_TTFT_DELTA_MS,
                                  f"worst {_f(ttft, 1)} ms")))
    return targets


def replay_target(name: str, replay: dict[str, Any] | None) -> Target:
    fraction = (replay or {}).get("warm_fraction")
    return Target("warm Claude Code TTFT ≤ 10% of cold", name,
                  *_check(fraction, (fraction or 1) <= MAX_WARM_FRACTION, f"{_pct(fraction)} of cold"))


def concurrency_target(name: str, figures: dict[str, Any]) -> Target:
    speedup = (figures["concurrency"].get(4) or {}).get("speedup")
    return Target("4 concurrent ≥ 2× single-stream aggregate", name,
                  *_check(speedup, (speedup or 0) >= MIN_CONCURRENT_SPEEDUP, f"{_f(speedup, 2)}×"))


def peer_targets(subject: str, rows: list[dict[str, Any]]) -> list[Target]:
    ttft, decode = _worst(rows, "ttft_ratio"), _worst(rows, "decode_ratio")
    return [
        Target("TTFT ≥ 1.0× peer (peer TTFT / Pensieve TTFT)", subject,
               *_check(ttft, (ttft or 0) >= MIN_PEER_RATIO, f"worst {_f(ttft, 3)}×")),
        Target("decode ≥ 1.0× peer", subject, *_check(decode, (decode or 0) >= MIN_PEER_RATIO, f"worst {_f(decode, 3)}×")),
    ]


# -- summary -------------------------------------------------------------------------------------------

def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Figures per contender, comparisons, and every target that could be checked."""
    ok = {name: r for name, r in run["contenders"].items() if r.get("status") == "ok"}
    figures = {name: contender_figures(r) for name, r in ok.items()}
    chat = [p["key"] for p in run["plan"]["prompts"]]
    sweep = [key for key in chat if key.startswith("sweep-")]
    overhead, peers, targets = {}, {}, []
    for mine, raw in PAIRS:
        if mine in figures and raw in figures:
            overhead[f"{mine} vs {raw}"] = rows = compare(figures[mine], figures[raw], chat)
            targets += raw_targets(f"{mine} vs {raw}", rows, sweep)
    for name, fig in figures.items():
        if ok[name].get("kind") == "pensieve":
            targets.append(replay_target(name, fig["replay"]))
            targets.append(concurrency_target(name, fig))
            targets += [Target(*t) for t in restart_targets(name, fig["restart"])]
            targets += [Target(*t) for t in side_request_targets(name, fig["side_request"])]
    for mine, peer in PEERS:
        if mine in figures and peer in figures:
            peers[f"{mine} vs {peer}"] = rows = compare(figures[mine], figures[peer], chat)
            targets += peer_targets(f"{mine} vs {peer}", rows)
    return {"figures": figures, "overhead": overhead, "peers": peers, "targets": [asdict(t) for t in targets]}


# -- Markdown ------------------------------------------------------------------------------------------

def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _mib(value: int | None) -> str:
    return "—" if not value else f"{value / 2**20:,.0f} MiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _gpu_words(gpu: dict[str, Any] | None) -> str:
    if not gpu:
        return "none (everything on the CPU)"
    memory = f", {gpu['memory_bytes'] / 2**30:.0f} GiB" if gpu.get("memory_bytes") else ""
    offload = "llama.cpp built with GPU offload" if gpu.get("llamacpp_gpu_offload") else "llama.cpp CPU-only build"
    return f"{gpu.get('name')}{memory}; {offload}; MLX: {gpu.get('mlx') or 'not installed'}"


def _machine_section(run: dict[str, Any]) -> list[str]:
    m = run["machine"]
    v = m.get("versions", {})
    git = m.get("git", {})
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    rows = [
        ["CPU", m.get("cpu", "?")],
        ["GPU", _gpu_words(m.get("gpu"))],
        ["cores", f"{m.get('logical_cores')} logical, {m.get('physical_cores') or '?'} physical"],
        ["RAM", f"{(m.get('ram_bytes') or 0) / 2**30:.1f} GiB"],
        ["OS", m.get("os", "?")],
        ["Python", m.get("python", "?")],
        ["pensieve", f"{v.get('pensieve') or '?'} at {commit}"],
        ["llama-cpp-python / mlx / mlx-lm",
         " / ".join(str(v.get(k) or "not installed") for k in ("llama-cpp-python", "mlx", "mlx-lm"))],
        ["load average at start", ", ".join(f"{x:.2f}" for x in m.get("load_average_at_start") or []) or "?"],
    ]
    return ["## Machine", ""] + _table(["", ""], rows)


def _contenders_section(run: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in run["contenders"].items():
        status = r.get("status", "?") + (f": {r['reason']}" if r.get("reason") else "")
        notes = "; ".join(r.get("notes") or [])
        rows.append([f"`{name}`", r.get("description", ""), status, _f(r.get("startup_s")), _mib(r.get("peak_rss_bytes")),
                     notes])
    return ["## Contenders", ""] + _table(["contender", "what", "status", "startup s", "peak RSS", "notes"], rows)


def _targets_section(summary: dict[str, Any]) -> list[str]:
    rows = [[Target(**t).mark, t["name"], f"`{t['subject']}`", t["value"]] for t in summary["targets"]]
    if not rows:
        return ["## Targets", "", "No target could be checked (a compared contender was skipped).", ""]
    return ["## Targets", ""] + _table(["", "target", "compared", "measured"], rows)


def _workloads_section(run: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    rows = []
    for prompt in run["plan"]["prompts"]:
        for name, fig in summary["figures"].items():
            w = fig["workloads"].get(prompt["key"])
            if w is None:
                continue
            rows.append([prompt["key"], f"`{name}`", _f(w["prompt_tokens"], 0), _f(w["ttft_ms"]), _f(w["prefill_tps"], 0),
                         _f(w["decode_tps"]), _f(w["output_tokens"], 0), f"{w['n']}" + (f" ({len(w['errors'])} failed)" if w["errors"] else "")])
    header = ["workload", "contender", "prompt tok", "TTFT ms", "prefill tok/s", "decode tok/s", "out tok", "runs"]
    return ["## Single requests (medians)", ""] + _table(header, rows)


def _mark(value: float | None, ok: bool) -> str:
    return "" if value is None else (f" {MET}" if ok else f" {MISSED}")


def _overhead_section(summary: dict[str, Any]) -> list[str]:
    rows = []
    for pair, pair_rows in summary["overhead"].items():
        for r in pair_rows:
            d, p, t = r["decode_ratio"], r["prefill_ratio"], r["ttft_delta_ms"]
            rows.append([f"`{pair}`", r["workload"],
                         _f(d, 3) + _mark(d, (d or 0) >= 1 - MAX_DECODE_OVERHEAD),
                         _f(t, 1) + _mark(t, (t if t is not None else 1e9) <= MAX_TTFT_DELTA_MS),
                         _f(p, 3) + ("" if not r["workload"].startswith("sweep-") else _mark(p, (p or 0) >= MIN_RAW_RATIO))])
    if not rows:
        return []
    header = ["pair", "workload", "decode ratio (≥0.97)", "TTFT Δ ms (≤20)", "prefill ratio (≥0.95)"]
    return ["## Pensieve overhead vs the raw engine", ""] + _table(header, rows)


def _peers_section(summary: dict[str, Any]) -> list[str]:
    rows = []
    for pair, pair_rows in summary["peers"].items():
        for r in pair_rows:
            t, d = r["ttft_ratio"], r["decode_ratio"]
            rows.append([f"`{pair}`", r["workload"], _f(t, 3) + _mark(t, (t or 0) >= MIN_PEER_RATIO),
                         _f(d, 3) + _mark(d, (d or 0) >= MIN_PEER_RATIO), _f(r["prefill_ratio"], 3)])
    if not rows:
        return []
    header = ["pair", "workload", "TTFT ratio peer/Pensieve (≥1)", "decode ratio Pensieve/peer (≥1)", "prefill ratio"]
    return ["## Pensieve vs peers", ""] + _table(header, rows)


def _replay_section(summary: dict[str, Any]) -> list[str]:
    rows = []
    for name, fig in summary["figures"].items():
        r = fig["replay"]
        if r is None:
            continue
        frac = r["warm_fraction"]
        rows.append([f"`{name}`", _f(r["ttft_cold_ms"]), _f(r["ttft_warm_ms"]),
                     _pct(frac) + _mark(frac, (frac or 1) <= MAX_WARM_FRACTION),
                     f"{r['prefilled_cold']} / {r['cache_read_cold']}", f"{r['prefilled_warm']} / {r['cache_read_warm']}",
                     "; ".join(e or "" for e in r["errors"])])
    if not rows:
        return []
    header = ["contender", "TTFT cold ms", "TTFT warm ms", "warm/cold (≤10%)",
              "cold: prefilled / cache read", "warm: prefilled / cache read", "errors"]
    return ["## Claude Code request replayed (cold, then warm with a new `cch=`)", ""] + _table(header, rows)


def _concurrency_section(summary: dict[str, Any]) -> list[str]:
    levels = sorted({n for fig in summary["figures"].values() for n in fig["concurrency"]})
    rows = []
    for name, fig in summary["figures"].items():
        conc = fig["concurrency"]
        if not conc:
            continue
        cells = [_f((conc.get(n) or {}).get("aggregate_tps")) for n in levels]
        speedups = []
        for n in levels:
            s = (conc.get(n) or {}).get("speedup")
            judged = n == 4 and s is not None and fig["kind"] == "pensieve"
            speedups.append(_f(s, 2) + ("×" if s is not None else "") + (_mark(s, s >= MIN_CONCURRENT_SPEEDUP) if judged else ""))
        rows.append([f"`{name}`", *cells, *speedups[1:]])
    if not rows:
        return []
    header = ["contender", *(f"{n} stream{'s' if n > 1 else ''} tok/s" for n in levels),
              *(f"{n} vs 1" + (" (Pensieve ≥2×)" if n == 4 else "") for n in levels[1:])]
    note = ["", "Raw rows are the engine's own batched decode of the same prompts in one process (no HTTP, no "
            "client threads): the most batching gives on this machine. Server rows include prefill, HTTP and the "
            "client threads, which share the same cores.", ""]
    return ["## Concurrent streams (aggregate output tok/s)", ""] + _table(header, rows) + note


def render_markdown(run: dict[str, Any], summary: dict[str, Any]) -> str:
    title = f"# Pensieve benchmark — {run['date']} on {run['machine']['name']}" + (" (quick)" if run.get("quick") else "")
    intro = [title, "", f"Command: `{run['command']}`  ", f"Started {run['started_at']}, took {_f(run.get('duration_s'), 0)} s. "
             f"Greedy (temperature 0), {run['plan']['prompts'][0]['max_tokens']} output tokens at most, "
             f"{run['plan']['repetitions']} repetition(s) per prompt; medians shown. How it is measured: "
             "[benchmarks/README.md](../README.md).", ""]
    notes = [f"- {n}" for n in run.get("notes", [])]
    sections = [intro, _machine_section(run), _contenders_section(run), _targets_section(summary),
                _workloads_section(run, summary), _overhead_section(summary), _peers_section(summary),
                _replay_section(summary), restart_section({n: f["restart"] for n, f in summary["figures"].items()}),
                side_request_section({n: f["side_request"] for n, f in summary["figures"].items()}),
                _concurrency_section(summary),
                (["## Notes", "", *notes, ""] if notes else [])]
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"


def write_reports(run: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``<date>-<machine>[-quick].md`` and ``.json`` in ``out_dir``; returns both paths."""
    summary = summarize(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{run['date']}-{run['machine']['name']}" + ("-quick" if run.get("quick") else "")
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md.write_text(render_markdown(run, summary), encoding="utf-8")
    js.write_text(json.dumps({**run, "summary": summary}, indent=2, default=str) + "\n", encoding="utf-8")
    return md, js
