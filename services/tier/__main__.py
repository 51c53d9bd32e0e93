"""``python -m services.tier --tier edge --port 8001``: same as ``edgebed serve``."""

import sys

from services.tier.cli import main

sys.exit(main())
