"""`python -m client` is `mtasr-client`."""

import sys

from client.cli import main

sys.exit(main())
