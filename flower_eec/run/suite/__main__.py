"""``python -m flower_eec.run.suite SUITE.yaml``: as ``flower-eec bench``."""

import sys

from flower_eec.run.suite import main

sys.exit(main())
