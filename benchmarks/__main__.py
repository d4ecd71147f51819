"""``python -m benchmarks``: run the suite (see benchmarks/suite.py)."""

import sys

from .suite import main

sys.exit(main())
