"""``python -m skymorph``: the ``skymorph`` command, where the venv's scripts are not on PATH."""

import sys

from skymorph.cli import main

sys.exit(main())
