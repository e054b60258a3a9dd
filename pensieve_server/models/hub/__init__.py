"""Pulling models from the Hugging Face Hub into the store (``pensieve models pull``), by concern:

* :mod:`.planning`: a spec becomes a repo, a commit and the files to fetch (:func:`plan`), online and
  offline alike, from a :mod:`.listing` of the Hub or the Hugging Face cache; :mod:`.files` picks the
  model's files (MLX folder, or one GGUF quantisation);
* :mod:`.fetch`: download with resume, then install (:func:`download`, :func:`pull`);
  :mod:`.progress` counts the bytes for the caller's display;
* :mod:`.verify`: sizes and hashes, then the strict format checks ``models import`` uses;
* :mod:`.errors`: huggingface_hub and network failures as one-line errors.

The names below are the API the CLI uses.
"""

from pensieve_server.models.hub.errors import HubNotFound, hub_errors
from pensieve_server.models.hub.fetch import download, pull
from pensieve_server.models.hub.listing import RemoteFile
from pensieve_server.models.hub.planning import DOWNLOADS, INCOMPLETE, PLAN_FILE, PullPlan, parse_spec, plan
from pensieve_server.models.hub.progress import Progress, ProgressCallback

__all__ = [
    "DOWNLOADS",
    "INCOMPLETE",
    "PLAN_FILE",
    "HubNotFound",
    "Progress",
    "ProgressCallback",
    "PullPlan",
    "RemoteFile",
    "download",
    "hub_errors",
    "parse_spec",
    "plan",
    "pull",
]
