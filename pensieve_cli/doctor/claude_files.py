"""Doctor's checks of Claude Code's files and environment: ~/.claude.json, settings.json, the token
it sends, its API timeout, and Claude Code variables in this shell."""

from __future__ import annotations

from pensieve_cli.doctor.context import Context
from pensieve_cli.doctor.report import FAIL, OK, SKIP, WARN, Check

MIN_API_TIMEOUT_MS = 3_000_000
RETRY_HANG = "Claude Code gets 401 and retries silently for minutes, which looks like a hang"


def check_claude_json(ctx: Context) -> Check:
    from pensieve_cli.claude_config import ConfigFileError, display, parse_json

    path = ctx.claude_paths.claude_json
    try:
        data, _ = parse_json(path.read_bytes(), path)
    except FileNotFoundError:
        return Check("claude.json", FAIL, f"{display(path)} does not exist: Claude Code will ask you to log in",
                     "pensieve setup")
    except (OSError, ConfigFileError) as exc:
        return Check("claude.json", FAIL, str(exc).split("; fix", 1)[0], f"fix or move {display(path)}")
    if data.get("hasCompletedOnboarding") is not True:
        return Check("claude.json", FAIL, f"{display(path)}: onboarding is not marked done, so Claude Code "
                     "will ask you to log in", "pensieve setup")
    return Check("claude.json", OK, f"{display(path)}: onboarding done")


def _same_url(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        return url.strip().rstrip("/").replace("://localhost:", "://127.0.0.1:")

    return norm(a) == norm(b)


def check_settings_json(ctx: Context) -> Check:
    from pensieve_cli.claude_config import display

    path = display(ctx.claude_paths.settings_json)
    data, problem = ctx.claude_settings
    if data is None:
        exists = "does not exist" not in problem
        return Check("settings.json", FAIL, problem,
                     f"fix or move {path}, then run `pensieve setup`" if exists else "pensieve setup")
    if not isinstance(data.get("env", {}), dict):
        return Check("settings.json", FAIL, f'{path}: "env" is not an object', f"fix {path}, then `pensieve setup`")
    base_url = ctx.claude_env_file().get("ANTHROPIC_BASE_URL")
    if not base_url:
        return Check("settings.json", FAIL, f"{path} sets no ANTHROPIC_BASE_URL: Claude Code talks to Anthropic",
                     "pensieve setup")
    if not _same_url(str(base_url), ctx.settings.base_url):
        return Check("settings.json", FAIL, f"{path} points Claude Code at {base_url}, but Pensieve serves "
                     f"{ctx.settings.base_url}", "pensieve setup")
    return Check("settings.json", OK, f"{path} points Claude Code at {base_url}")


def effective_auth(ctx: Context) -> tuple[str, str, str]:
    """``(variable, token, where)`` Claude Code sends: settings.json ``env`` wins over the shell
    (measured with Claude Code 2.1), and ``ANTHROPIC_AUTH_TOKEN`` (Bearer) is what Pensieve reads first."""
    file_env = ctx.claude_env_file()
    for key in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"):
        if file_env.get(key):
            return key, str(file_env[key]), "settings.json"
        if ctx.environ.get(key):
            return key, ctx.environ[key], "this shell"
    return "", "", ""


def check_token(ctx: Context) -> Check:
    from pensieve_server.auth_token import fingerprint

    if ctx.claude_settings[0] is None:
        return Check("token", SKIP, "skipped: settings.json cannot be read")
    key, token, where = effective_auth(ctx)
    if not token:
        return Check("token", FAIL, f"settings.json sets no ANTHROPIC_AUTH_TOKEN: {RETRY_HANG}", "pensieve setup")
    expected = ctx.settings.auth_token
    mine = f"{key} {fingerprint(token)} (from {where})"
    if ctx.health is not None:
        accepted = token_accepted(ctx.settings.base_url, token)
        if accepted is True:
            return Check("token", OK, f"{mine} is accepted by the server")
        if accepted is False:
            return Check("token", FAIL, f"{mine} is refused by the server (its token is {fingerprint(expected)}): "
                         f"{RETRY_HANG}", "pensieve setup (writes the server's token), then restart claude")
    if token != expected:
        return Check("token", FAIL, f"{mine} differs from the server's token {fingerprint(expected)}: {RETRY_HANG}",
                     "pensieve setup (writes the server's token)")
    return Check("token", OK, f"{mine} matches the server's token")


def token_accepted(base_url: str, token: str) -> bool | None:
    """True/False from an authenticated request; None when the server gave no clear answer."""
    import httpx

    try:
        response = httpx.get(f"{base_url}/v1/models", headers={"authorization": f"Bearer {token}"}, timeout=5)
    except httpx.HTTPError:
        return None
    return True if response.status_code == 200 else False if response.status_code == 401 else None


def check_api_timeout(ctx: Context) -> Check:
    if ctx.claude_settings[0] is None:
        return Check("API timeout", SKIP, "skipped: settings.json cannot be read")
    raw = ctx.claude_env_file().get("API_TIMEOUT_MS")
    try:
        value = int(str(raw)) if raw is not None else 0
    except ValueError:
        value = 0
    if value >= MIN_API_TIMEOUT_MS:
        return Check("API timeout", OK, f"API_TIMEOUT_MS={value} ({value // 60000} min)")
    shown = f"API_TIMEOUT_MS={raw}" if raw is not None else "API_TIMEOUT_MS is not set"
    return Check("API timeout", WARN, f"{shown}: Claude Code may give up while a long prompt is still being read",
                 f"pensieve setup (sets {MIN_API_TIMEOUT_MS})")


def check_shell_env(ctx: Context) -> Check:
    """Claude Code variables in this shell. settings.json ``env`` wins over them (measured with Claude
    Code 2.1), so a different value there is only a warning; one the file does not set is used as is."""
    from pensieve_cli.claude_env import ENV_KEYS, env_for_settings
    from pensieve_server.auth_token import fingerprint

    file_env = ctx.claude_env_file()
    wanted = env_for_settings(ctx.settings, ctx.settings.auth_token)
    secret = {"ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"}
    used, overridden = [], []
    for key in (*ENV_KEYS, "ANTHROPIC_API_KEY"):
        value = ctx.environ.get(key)
        if value is None:
            continue
        shown = f"{key} ({fingerprint(value)})" if key in secret else f"{key}={value}"
        if key in file_env:
            if value != str(file_env[key]):
                overridden.append((key, shown))
        elif value != wanted.get(key, ctx.settings.auth_token):
            used.append((key, shown))
    if not used and not overridden:
        return Check("shell env", OK, "no Claude Code variables in this shell that differ from settings.json")
    keys = " ".join(key for key, _ in used + overridden)
    fix = f"unset {keys} (and remove them from your shell profile)"
    serious = [key for key, _ in used if key in ("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN")]
    parts = []
    if used:
        parts.append(f"this shell sets {', '.join(s for _, s in used)}, which Claude Code uses because "
                     "settings.json does not set it")
    if overridden:
        parts.append(f"this shell sets {', '.join(s for _, s in overridden)}; settings.json overrides it for "
                     "Claude Code, but other tools (the Anthropic SDK, scripts) still see it")
    if any(key == "ANTHROPIC_API_KEY" for key, _ in used):
        parts.append("Claude Code sends ANTHROPIC_API_KEY as x-api-key and may ask whether to use it")
    return Check("shell env", FAIL if serious else WARN, "; ".join(parts), fix)
