"""The checks ``pensieve doctor`` runs, in report order, chosen once: for a local model or for an upstream.

Each check reads a :class:`~.context.Context`, never changes anything, and turns every expected
problem into a ``fail`` or ``warn`` line that says what to do, so doctor never ends in a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pensieve_cli.doctor import upstream
from pensieve_cli.doctor.claude_cli import check_claude_cli, claude_run
from pensieve_cli.doctor.claude_files import (
    check_api_timeout,
    check_claude_json,
    check_settings_json,
    check_shell_env,
    check_token,
)
from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.engine import check_engine, check_gpu, check_mlx
from pensieve_cli.doctor.model import check_model, check_model_loads
from pensieve_cli.doctor.report import SKIP, Check
from pensieve_cli.doctor.server import check_server
from pensieve_cli.doctor.system import check_disk_cache, check_python, check_resources
from pensieve_server.settings import Settings

CheckFn = Callable[[Context], Check]

CLAUDE_CHECKS: tuple[CheckFn, ...] = (check_claude_json, check_settings_json, check_token, check_api_timeout,
                                      check_shell_env, check_claude_cli)
LOCAL_CHECKS: tuple[CheckFn, ...] = (check_python, check_mlx, check_engine, check_gpu, check_model, check_server,
                                     check_model_loads, check_resources, check_disk_cache, *CLAUDE_CHECKS)
# The same lines in the same places: the local-model ones say that requests go to the upstream.
UPSTREAM_CHECKS: tuple[CheckFn, ...] = (
    check_python, upstream.forwarded("mlx"), upstream.check_engine, upstream.forwarded("gpu"),
    upstream.check_upstream, check_server, upstream.forwarded("model loads"), upstream.forwarded("resources"),
    upstream.forwarded("disk cache"), *CLAUDE_CHECKS,
)


def checks_for(settings: Settings) -> tuple[CheckFn, ...]:
    return UPSTREAM_CHECKS if settings.engine == "upstream" else LOCAL_CHECKS


def run_checks(ctx: Context, with_claude: bool = False) -> Iterator[Check]:
    """Every check in order, one at a time (each may take a while), then the self-test over HTTP."""
    from pensieve_cli.doctor import selftest

    for check in checks_for(ctx.settings):
        yield check(ctx)
    settings = ctx.settings
    if ctx.health is None:
        yield Check("self-test", SKIP, "skipped: the server is not running")
    else:
        yield from selftest.run_selftest(settings.base_url, settings.auth_token, settings.default_model,
                                         settings.model_for_tier("sonnet"))
    if with_claude:
        yield claude_run(ctx)
