"""Allow ``python -m edge_monitor``."""

import sys

from edge_monitor.cli import main

sys.exit(main())
