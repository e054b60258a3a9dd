"""huggingface_hub and network failures as one-line ModelErrors that say what to do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pensieve_server.models.store import ModelError


class HubNotFound(ModelError):
    """The repo, revision or file is not on the Hub (or not visible without a token)."""


def _web_url(repo: str, endpoint: str | None) -> str:
    return f"{endpoint or 'https://huggingface.co'}/{repo}"


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(__import__(module).TransportError)
    with contextlib.suppress(ImportError):
        import requests

        errors += [requests.ConnectionError, requests.Timeout]
    return tuple(errors)


@contextlib.contextmanager
def hub_errors(repo: str, revision: str, endpoint: str | None, path: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into one-line ModelErrors that say what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{repo}/{path}" if path else repo
    try:
        yield
    except ModelError:
        raise
    except HFValidationError:
        raise HubNotFound(f"{repo!r} is not a valid Hugging Face repo name (owner/name)") from None
    except GatedRepoError:
        raise ModelError(f"{repo} is gated: accept its terms at {_web_url(repo, endpoint)} and set HF_TOKEN "
                         "to a token of that account") from None
    except RevisionNotFoundError:
        raise HubNotFound(f"revision {revision!r} not found in {repo}; check --revision") from None
    except RemoteEntryNotFoundError:
        raise HubNotFound(f"{what} not found on the Hub at revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise HubNotFound(f"{repo} not found on Hugging Face; check the name or pass HF_TOKEN for private repos")\
            from None
    except OfflineModeIsEnabled:
        raise ModelError(f"offline mode is on (HF_HUB_OFFLINE) and {repo} is not downloaded yet; "
                         "unset HF_HUB_OFFLINE to download it") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401:
            raise ModelError(f"Hugging Face refused {what} (HTTP 401): HF_TOKEN missing or invalid") from None
        if status == 403:
            raise ModelError(f"Hugging Face refused {what} (HTTP 403): your HF_TOKEN has no access to it") from None
        if status == 404:
            raise HubNotFound(f"{what} not found on Hugging Face; check the name or pass HF_TOKEN for private "
                              "repos") from None
        if status == 416:
            raise ModelError(f"the server rejected resuming {what} (HTTP 416); run the same command again "
                             "to download it from the start") from None
        raise ModelError(f"Hugging Face answered HTTP {status} for {what}; run the same command again "
                         "later to resume") from None
    except LocalEntryNotFoundError:
        raise ModelError(f"network lost while downloading {what}; run the same command again to resume") from None
    except _network_errors():
        raise ModelError(f"network lost while downloading {what}; run the same command again to resume") from None
    except OSError as exc:
        if "Consistency check failed" in str(exc):  # http_get: fewer bytes than announced
            raise ModelError(f"network lost while downloading {what}; run the same command again to resume")\
                from None
        raise
