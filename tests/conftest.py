import os

import numpy as np
import pytest

# Keep BLAS/numba thread counts small: CI has 2 cores and tests run beside Dask workers.
os.environ.setdefault("NUMBA_NUM_THREADS", "2")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
