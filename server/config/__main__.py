"""``python -m server.config``: validate the configuration, print the problems (entry-point.sh --check)."""

import sys

from server.config import main

sys.exit(main())
