"""The Flask layer only: routes, guards, error handlers. Protocol logic lives in ``anthropic/``."""
