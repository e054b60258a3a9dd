"""``pensieve doctor``'s checks, by concern; :mod:`.checklist` picks the list once per mode.

* :mod:`.report`: a line of the report (:class:`~.report.Check`), the summary, how a line prints (the leaf);
* :mod:`.context`: what the checks look at, gathered once (settings, Claude Code's files, ``/health``,
  the installed model and the engine that runs it);
* :mod:`.system` (Python, memory, disk, prefix states on disk), :mod:`.engine` (engine, MLX, GPU),
  :mod:`.model` (installed, loads), :mod:`.server` (who holds the port), :mod:`.claude_files`
  (~/.claude.json, settings.json, token, timeout, shell), :mod:`.claude_cli` (the ``claude`` binary),
  :mod:`.upstream` (an upstream server instead of a local model), :mod:`.selftest` (real requests);
* :mod:`.checklist`: the checks for a local model or for an upstream, in report order.
"""
