"""CuPy path of the conv kernels (CUDA slab kernel): parity with NumPy.

Needs CuPy and an NVIDIA GPU (marker ``gpu``; skipped otherwise). The
CPU-side orchestration it shares with ``conv_fast`` is tested everywhere.
"""

import numpy as np
import pytest

from ntkscale import stax
from tests.support.nets import SLAB_NETS as NETS

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


def _gpu_available():
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


if not _gpu_available():  # pragma: no cover
    pytest.skip("no CUDA device", allow_module_level=True)


@pytest.mark.parametrize("i", range(len(NETS)))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_matches_numpy(i, dtype, rng):
    kf = NETS[i][2]
    x1 = rng.uniform(-1, 1, (5, 6, 5, 2))
    x2 = rng.uniform(-1, 1, (4, 6, 5, 2))
    rtol = 1e-11 if dtype == "float64" else 2e-4
    for a, b in ((x1, None), (x1, x2)):
        ref = kf(a, b, ("nngp", "ntk"))
        out = kf(cupy.asarray(a.astype(dtype)), None if b is None else cupy.asarray(b.astype(dtype)),
                 ("nngp", "ntk"))
        for o, r in zip(out, ref):
            np.testing.assert_allclose(cupy.asnumpy(o), r, rtol=rtol, atol=rtol * np.abs(r).max())
    d = kf.diag(cupy.asarray(x1.astype(dtype)), "ntk")
    np.testing.assert_allclose(cupy.asnumpy(d), np.diag(kf(x1, None, "ntk")), rtol=rtol)


def test_cupy_reference_path_for_pooling_nets(rng):
    kf = stax.presets.myrtle(5, final_pools=1)[2]
    x = rng.uniform(size=(3, 8, 8, 3))
    out = kf(cupy.asarray(x), None, "ntk")
    np.testing.assert_allclose(cupy.asnumpy(out), kf(x, None, "ntk"), rtol=1e-11)
