"""fastall: a feature-cache fast trainer for the frozen-ResNet-50 C-NMC 2019 leukemia classifier."""

import os as _os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting hold a core another process needs: under CPU contention every
# parallel region then waits a scheduler slice (int8 batch-1 measured 10x slower). Sleep instead. The OpenMP
# runtime reads this when torch loads it, so it acts where fastall is imported before torch (the CLI).
# OMP_WAIT_POLICY=ACTIVE in the environment keeps spinning.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
