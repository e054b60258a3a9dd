"""The model layer's errors: a leaf, so the store, downloads and format readers share them without
importing each other."""

from __future__ import annotations


class ModelError(Exception):
    """A model problem the user can fix; the message says how."""


class ModelNotFound(ModelError):
    pass
