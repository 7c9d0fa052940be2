"""``python -m bench [--quick] [--reps N] [--only IMPL,..] [--workloads NAME,..]``."""

import sys

from bench.run import main

sys.exit(main())
