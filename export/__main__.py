"""`python -m export` is `mtasr-export`."""

import sys

from export.cli import main

sys.exit(main())
