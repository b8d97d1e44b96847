"""Run a benchmark suite: every entry with every seed, then one table and one figure.

    python benchmarks/suite.py benchmarks/suites/smoke.yaml
    python benchmarks/suite.py benchmarks/suites/cpu.yaml data.root=$DATA
    python benchmarks/suite.py benchmarks/suites/cpu.yaml --report-only

The runner is ``flower_eec.run.suite`` (``flower_eec.run.suite.spec`` describes the suite file);
this script is ``python -m flower_eec.run.suite``.
"""

from __future__ import annotations

import sys

from flower_eec.run.suite import main

if __name__ == "__main__":
    sys.exit(main())
