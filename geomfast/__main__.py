"""``python -m geomfast …`` — the same as the ``geomfast`` command."""
import sys

from .cli import main

sys.exit(main())
