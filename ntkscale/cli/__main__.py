"""``python -m ntkscale.cli``."""

import sys

from .main import main

sys.exit(main())
