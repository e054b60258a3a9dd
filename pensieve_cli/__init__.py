"""The ``pensieve`` command line."""
