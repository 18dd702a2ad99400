"""fastall: a feature-cache fast trainer for the frozen-ResNet-50 C-NMC 2019 leukemia classifier."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenMP threads that spin while waiting hold a core another process needs: under CPU contention every
# parallel region then waits a scheduler slice (batch-1 int8 and fp32 measured 10x and more slower). Sleep
# instead. The OpenMP runtime reads this when torch loads it, so it acts where fastall is imported before
# torch (the CLI) or where the environment sets it; OMP_WAIT_POLICY=ACTIVE keeps spinning.
OMP_WAIT_POLICY_IN_FORCE = _os.environ.get("OMP_WAIT_POLICY") or (
    "PASSIVE" if "torch" not in _sys.modules else None
)
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
