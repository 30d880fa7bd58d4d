"""`python -m export.parity`: see `export.parity`."""

import sys

from export.parity import main

sys.exit(main())
