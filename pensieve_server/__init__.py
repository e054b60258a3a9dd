"""Pensieve server: Anthropic Messages API over local inference engines."""

__version__ = "0.1.0"
