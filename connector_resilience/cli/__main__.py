"""``python -m connector_resilience.cli``: the installed command, without the script."""

from __future__ import annotations

import sys

from connector_resilience.cli import main

if __name__ == "__main__":  # importing this module (doc tools do) must not run the command
    sys.exit(main())
