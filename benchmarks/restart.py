"""Claude Code after a server restart: the prefix state saved on disk against the cold prefill.

Two rows, each with its own cold reference measured in the same run (a server started on an empty
prefix-state folder) and the same request after ``stop`` + ``start`` on the same PENSIEVE_HOME:

- ``print``: the captured ``claude --print`` request: cold, then (after a restart) again with a new
  ``cch=`` billing value, as the next ``claude --print`` session sends it;
- ``interactive``: the captured interactive session: its second main request cold, then the first
  message on a fresh server (which computes the session's prefix), a restart, and the second
  main request again: the next turn of a session whose server was restarted in between.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.clients import Sample
from benchmarks.workloads import CapturedRequest, load_captured, replay_request

INTERACTIVE = Path("tests/fixtures/claude-code/interactive")
FIRST_MESSAGE, NEXT_TURN = "002-POST-v1_messages.json", "004-POST-v1_messages.json"
MAX_RESTART_FRACTION = 0.05
SAVE_WAIT_S = 300.0


def states_dir(home: Path) -> Path:
    return home / "cache" / "prefix-states"


def clear_states(home: Path) -> None:
    for path in states_dir(home).glob("*"):
        if path.is_file() and path.name != ".lock":
            path.unlink(missing_ok=True)


def wait_for_saved_state(home: Path, before: set[str], timeout_s: float = SAVE_WAIT_S) -> bool:
    """Wait until a new state file is on disk and no write is in flight (saving runs in the background)."""
    deadline = time.monotonic() + timeout_s
    folder = states_dir(home)
    while time.monotonic() < deadline:
        names = {p.name for p in folder.glob("*.kvstate")} if folder.is_dir() else set()
        writing = list(folder.glob(".tmp-*")) if folder.is_dir() else []
        if names - before and not writing:
            return True
        time.sleep(0.5)
    return False


def saved_names(home: Path) -> set[str]:
    folder = states_dir(home)
    return {p.name for p in folder.glob("*.kvstate")} if folder.is_dir() else set()


def restart(contender: Any, clear: bool) -> None:
    contender.stop()
    if clear:
        clear_states(contender.ctx.pensieve_home)
    contender.start()


def interactive_fixtures(repo: Path) -> tuple[CapturedRequest, CapturedRequest] | None:
    folder = repo / INTERACTIVE
    if not (folder / FIRST_MESSAGE).is_file() or not (folder / NEXT_TURN).is_file():
        return None
    return load_captured(folder / FIRST_MESSAGE), load_captured(folder / NEXT_TURN)


def run_restart(contender: Any, captured: CapturedRequest | None, repo: Path, token: str, max_tokens: int,
                log: Any, rows: dict[str, Any] | None = None, interactive: bool = True) -> dict[str, Any]:
    """Both rows for one Pensieve contender (restarted several times; it is left running), filled into
    ``rows`` as each is measured, so an interrupted run still reports the rows it finished."""
    home = contender.ctx.pensieve_home
    rows = {} if rows is None else rows

    def replay(request: CapturedRequest, cch: str, workload: str) -> dict[str, Any]:
        sample = contender.replay(replay_request(request, cch, token, max_tokens), workload)
        log(f"  {contender.name:18} {workload}: TTFT {(sample.ttft_s or 0) * 1000:8.1f} ms "
            f"({sample.prompt_tokens} prefilled, {sample.cached_tokens} cached){'' if sample.ok else ' ' + str(sample.error)}")
        return sample.to_json()

    if captured is not None:
        restart(contender, clear=True)
        before = saved_names(home)
        cold = replay(captured, "a1b2c", "restart-print-cold")
        saved = wait_for_saved_state(home, before)
        restart(contender, clear=False)
        rows["print"] = {"cold": cold, "restart": replay(captured, "d3e4f", "restart-print"), "saved": saved}
    pair = interactive_fixtures(repo) if interactive else None
    if pair is not None:
        first, following = pair
        restart(contender, clear=True)
        cold = replay(following, "0a1b2", "restart-interactive-cold")
        restart(contender, clear=True)
        before = saved_names(home)
        replay(first, "3c4d5", "restart-interactive-first")
        saved = wait_for_saved_state(home, before)
        restart(contender, clear=False)
        rows["interactive"] = {"cold": cold, "restart": replay(following, "6e7f8", "restart-interactive"),
                               "saved": saved}
    return rows


# -- report --------------------------------------------------------------------------------------------

def restart_figures(rows: dict[str, Any] | None) -> dict[str, Any] | None:
    if not rows:
        return None
    figures = {}
    for label, row in rows.items():
        cold, after = Sample.from_json(row["cold"]), Sample.from_json(row["restart"])
        cold_ms = cold.ttft_s * 1000 if cold.ok and cold.ttft_s is not None else None
        after_ms = after.ttft_s * 1000 if after.ok and after.ttft_s is not None else None
        figures[label] = {
            "ttft_cold_ms": cold_ms, "ttft_restart_ms": after_ms,
            "restart_fraction": after_ms / cold_ms if after_ms is not None and cold_ms else None,
            "prefilled_cold": cold.prompt_tokens, "cache_read_cold": cold.cached_tokens,
            "prefilled_restart": after.prompt_tokens, "cache_read_restart": after.cached_tokens,
            "state_saved": row.get("saved"), "errors": [s.error for s in (cold, after) if not s.ok],
        }
    return figures


def restart_targets(name: str, figures: dict[str, Any] | None) -> list[tuple[str, str, str, bool | None]]:
    """(target, subject, measured, met) for each row measured."""
    targets = []
    for label, fig in (figures or {}).items():
        fraction = fig["restart_fraction"]
        measured = f"{fraction:.1%} of cold" if fraction is not None else "n/a"
        targets.append((f"{label} turn after a restart: TTFT ≤ 5% of cold", name, measured,
                        None if fraction is None else fraction <= MAX_RESTART_FRACTION))
    return targets


def restart_section(all_figures: dict[str, dict[str, Any] | None]) -> list[str]:
    rows = []
    for name, figures in all_figures.items():
        for label, fig in (figures or {}).items():
            frac = fig["restart_fraction"]
            mark = "" if frac is None else (" ✓" if frac <= MAX_RESTART_FRACTION else " ✗")
            rows.append(f"| `{name}` | {label} | {_ms(fig['ttft_cold_ms'])} | {_ms(fig['ttft_restart_ms'])} | "
                        f"{'n/a' if frac is None else f'{frac:.1%}'}{mark} | "
                        f"{fig['prefilled_cold']} / {fig['cache_read_cold']} | "
                        f"{fig['prefilled_restart']} / {fig['cache_read_restart']} | "
                        f"{'; '.join(e or '' for e in fig['errors'])} |")
    if not rows:
        return []
    return ["## Claude Code after a server restart (prefix states on disk)", "",
            "| contender | traffic | TTFT cold ms | TTFT after restart ms | restart/cold (≤5%) | "
            "cold: prefilled / cache read | restart: prefilled / cache read | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
            "Cold: a server started on an empty prefix-state folder. After restart: `stop` + `start` on the same "
            "PENSIEVE_HOME once the earlier turn's state was saved; `print` is the captured `claude --print` "
            "request with a new `cch=`, `interactive` the captured session's next main request after its first "
            "message ran before the restart.", ""]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
