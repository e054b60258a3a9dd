"""Doctor's view of an upstream server: reachable, key accepted, and serving the configured model.

With ``engine = upstream`` there is no local model to find, load or fit in memory; what matters
is whether ``GET {upstream_url}/v1/models`` answers and lists ``upstream_model``. The local-model
checks still get their line, as a skip that says where requests go (:func:`forwarded`).
"""

from __future__ import annotations

from collections.abc import Callable

from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.report import FAIL, OK, SKIP, WARN, Check
from pensieve_server.auth_token import fingerprint
from pensieve_server.upstream import DISCOVER

PROBE_TIMEOUT_S = 5.0
SETUP_FIX = "pensieve setup --upstream URL [--upstream-model MODEL] [--upstream-api-key KEY]"


def check_upstream(ctx: Context) -> Check:
    from pensieve_server.anthropic.errors import ApiError
    from pensieve_server.upstream.client import UpstreamClient, display_url

    settings = ctx.settings
    if not settings.upstream_url:
        return Check("upstream", FAIL, "engine is upstream, but upstream_url is not set", SETUP_FIX)
    where = f"{display_url(settings.upstream_url)} ({settings.upstream_api} API)"
    key = f", key {fingerprint(settings.upstream_api_key)}" if settings.upstream_api_key else ""
    client = UpstreamClient(settings.upstream_url, settings.upstream_api_key, settings.upstream_api,
                            PROBE_TIMEOUT_S)
    try:
        models = client.models(timeout=PROBE_TIMEOUT_S)
    except ApiError as exc:
        fix = ("set the key: pensieve config set upstream_api_key KEY" if "API key" in exc.message
               else "start the upstream server, or fix the address: " + SETUP_FIX)
        return Check("upstream", FAIL, f"{where}{key}: {exc.message}", fix)
    finally:
        client.close()
    listed = ", ".join(models[:8]) + (f" and {len(models) - 8} more" if len(models) > 8 else "") or "none"
    data = {"url": display_url(settings.upstream_url), "api": settings.upstream_api, "models": models}
    wanted = settings.default_model or DISCOVER  # what requests ask the upstream for
    if wanted == DISCOVER:
        if not models:
            return Check("upstream", FAIL, f"{where} lists no models", "set one: pensieve config set upstream_model ID",
                         data)
        return Check("upstream", OK, f"{where}{key} answers; serving {models[0]} (its first model); lists {listed}",
                     data=data)
    if models and wanted not in models:
        return Check("upstream", WARN, f"{where}{key} answers, but does not list the model {wanted!r}; "
                     f"it lists {listed}", f"pensieve setup --upstream {settings.upstream_url} --upstream-model {models[0]}",
                     data)
    return Check("upstream", OK, f"{where}{key} answers and serves {wanted}; lists {listed}", data=data)


def check_engine(ctx: Context) -> Check:
    settings = ctx.settings
    return Check("engine", OK, f"configured: upstream ({settings.upstream_api} API at "
                 f"{settings.upstream_url or '(not set)'})", data={"engine": "upstream"})


def forwarded(name: str) -> Callable[[Context], Check]:
    """The line of the local-model check ``name`` when an upstream server answers instead: a skip."""

    def skipped(ctx: Context) -> Check:
        return Check(name, SKIP, f"skipped: requests go to the upstream at {ctx.settings.upstream_url or '(not set)'}")

    skipped.__name__ = skipped.__qualname__ = f"forwarded_{name.replace(' ', '_')}"
    return skipped
