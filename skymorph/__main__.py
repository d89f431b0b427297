"""``python -m skymorph``: the ``skymorph`` command, where the venv's scripts are not on PATH."""

import sys

from skymorph.cli import main

if __name__ == "__main__":
    sys.exit(main())
