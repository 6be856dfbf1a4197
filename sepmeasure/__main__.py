"""``python -m sepmeasure``: the ``sepmeasure`` command (same commands, options and exit status)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
