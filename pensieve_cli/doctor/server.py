"""Doctor's check of the configured port: this Pensieve (version, model), nothing, or another program."""

from __future__ import annotations

from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.report import FAIL, OK, WARN, Check


def check_server(ctx: Context) -> Check:
    """Who holds the port: this Pensieve (which version, which model), nothing, or another program."""
    from pensieve_cli.daemon import describe_owner, pid_file_state, port_open

    settings = ctx.settings
    url, health = settings.base_url, ctx.health
    stale = pid_file_state(settings.paths).stale
    note = f" ({stale})" if stale else ""
    if health is not None:
        detail = (f"Pensieve {health.get('version')} at {url}, pid {health.get('pid')}, model {health.get('model')}"
                  f" on {health.get('engine')} ({health.get('device')}), up {round(health.get('uptime_s') or 0)} s")
        if health.get("model") != settings.default_model:
            return Check("server", WARN, f"{detail}; the config says {settings.default_model}",
                         "pensieve restart", dict(health))
        return Check("server", OK, detail, data=dict(health))
    if port_open(settings.host, settings.port):
        return Check("server", FAIL, f"port {settings.port} is held by {describe_owner(settings.port)}, "
                     f"not by Pensieve{note}",
                     "stop that program, or move Pensieve: pensieve setup --port N, then pensieve start")
    return Check("server", FAIL, f"not running at {url} (port {settings.port} is free){note}", "pensieve start")
