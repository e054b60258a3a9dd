"""Anthropic-shaped API errors: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""

from __future__ import annotations


class ApiError(Exception):
    """An error the client sees, with its HTTP status and Anthropic error type."""

    status = 500
    error_type = "api_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"type": "error", "error": {"type": self.error_type, "message": self.message}}


class InvalidRequest(ApiError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationError(ApiError):
    status = 401
    error_type = "authentication_error"


class PermissionDenied(ApiError):
    status = 403
    error_type = "permission_error"


class NotFound(ApiError):
    status = 404
    error_type = "not_found_error"


class MethodNotAllowed(ApiError):
    status = 405
    error_type = "invalid_request_error"


class RequestTooLarge(ApiError):
    status = 413
    error_type = "request_too_large"


class RateLimited(ApiError):
    status = 429
    error_type = "rate_limit_error"


class InternalError(ApiError):
    status = 500
    error_type = "api_error"


class GatewayTimeout(ApiError):
    """A server Pensieve forwards to (the upstream engine) stayed silent too long."""

    status = 504
    error_type = "timeout_error"


class ServerOverloaded(ApiError):
    status = 529
    error_type = "overloaded_error"


class PromptTooLong(InvalidRequest):
    """Claude Code recognises exactly this wording and tells the user the conversation is too long."""

    def __init__(self, prompt_tokens: int, limit: int) -> None:
        super().__init__(f"prompt is too long: {prompt_tokens} tokens > {limit} maximum")
        self.prompt_tokens = prompt_tokens
        self.limit = limit
