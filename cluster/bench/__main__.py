"""`python -m cluster.bench`: the same as `paygate bench`."""

import sys

from cluster.bench.cli import main

sys.exit(main())
