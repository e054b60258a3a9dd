"""``python -m pensieve_cli.completions``: print or (re)write the completion scripts."""

import sys

from pensieve_cli.completions import main

sys.exit(main())
