"""One line of ``pensieve doctor``'s report, the summary, and how a line is printed.

The leaf of the doctor package: every check module returns a :class:`Check`; nothing here runs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pensieve_cli import ui

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass
class Check:
    """One line of doctor's report. ``fix`` says what to run or change when it is not ok."""

    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}
        if self.data:
            out["data"] = self.data
        return out


def render(check: Check) -> None:
    message = f"{check.name}: {check.detail}"
    if check.status == OK:
        ui.success(message)
    elif check.status == SKIP:
        print(ui.paint(f"- {message}", "dim"))
    else:
        line = f"{message} — fix: {check.fix}" if check.fix else message
        (ui.failure if check.status == FAIL else ui.warning)(line)


def summary(checks: list[Check]) -> dict[str, int]:
    return {status: sum(c.status == status for c in checks) for status in (OK, WARN, FAIL, SKIP)}
