"""``python -m jaxsep``: the same as the ``jaxsep`` console script."""

import sys

from jaxsep.cli import main

if __name__ == "__main__":
    sys.exit(main())
