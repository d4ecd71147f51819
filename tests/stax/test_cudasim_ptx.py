"""Every CUDA kernel compiles for a real GPU target (sm_90 PTX), on a CPU, without a GPU.

The simulator tests (``test_cudasim_slab``, ``test_cudasim_flat``) execute the kernels'
Python source; they do not type or lower it for the CUDA target, where a construct the
simulator accepts (a Python object, an unsupported call, a CPU ``@njit`` function that
numba-cuda cannot retarget) would fail only on a GPU machine. This test runs numba-cuda's
own compiler (typing, lowering, NVVM) on the slab kernel and the flat kernel, float32 and
float64, with the argument types ``cuda_slab.run_pairs`` and ``cuda_flat.evaluate`` pass.

It needs NVVM and NVRTC (``pip install 'numba-cuda[cu13]'``, or ``nvidia-nvvm`` and
``nvidia-cuda-nvrtc``, or a CUDA toolkit on ``CUDA_HOME``) but no driver: it skips without
them. It runs in a child process,
outside the simulator, with numba-cuda's "current device" (asked for the compute
capability of device functions) stood in for by a capability tuple.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Compute capability compiled for (H100/H200).
CC = (9, 0)

CHILD = r"""
import json, sys, types as pytypes
import numba.cuda.dispatcher as disp
from numba import cuda, types as t
disp.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=CC)
from ntkscale.stax.engine import cuda_flat, cuda_kernels

out = {}
i32, i64, b = t.int32, t.int64, t.boolean
for name, T in (("float64", t.float64), ("float32", t.float32)):
    slab = (T[:, :, :, ::1], T[:, :, :, ::1], i64[::1], i64[::1], T[:, ::1], T[:, ::1], T[:, ::1],
            T[:, ::1], i32[:, ::1], T[:, ::1], i32[:, ::1], i32[:, ::1], i32[:, :, ::1], i32[:, ::1],
            i32[:, ::1], T[:, :, ::1], i32[:, :, ::1], i32[::1], T[::1], T[:, ::1], T[:, ::1], T[::1],
            T[::1], i64, i64, i64, i64, b, b, b, T, T[::1], b, i64, b)
    flat = (T[:, ::1], T[:, ::1], t.float64[:, :, ::1], t.float64[:, :, ::1], i64[::1],
            t.float64[:, ::1], t.float64, b, b)
    for kind, kernel, sig in (("slab", cuda_kernels.kernels(name), slab),
                              ("flat", cuda_flat.kernel(), flat)):
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=CC)
        out[f"{kind}-{name}"] = {"bytes": len(ptx), "barrier": "bar.sync" in ptx,
                                 "atomic": "atom." in ptx or "red." in ptx,
                                 "shared": ".shared" in ptx}
print("RESULT " + json.dumps(out))
"""


def _toolkit() -> Optional[str]:
    """A ``CUDA_HOME`` with NVVM and NVRTC ("" when numba-cuda's library finder sees both
    already: ``numba-cuda[cu12]``/``[cu13]`` wheels), or None."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib  # noqa: PLC0415 (optional)

        load_nvidia_dynamic_lib("nvvm")
        load_nvidia_dynamic_lib("nvrtc")
        return ""
    except Exception:  # noqa: BLE001 - not installed, or not found: look for a wheel below
        pass
    for entry in sys.path:
        for lib in glob.glob(os.path.join(entry, "nvidia", "cu1*", "lib", "libnvvm.so*")):
            home = os.path.dirname(os.path.dirname(lib))
            if glob.glob(os.path.join(home, "lib", "libnvrtc.so*")):
                return home
    return None


@pytest.mark.cudasim
def test_cuda_kernels_compile_to_ptx_for_a_gpu():
    try:
        import numba.cuda  # noqa: F401, PLC0415 (optional dependency)
    except ImportError:
        pytest.skip("numba-cuda is not installed (pip install 'ntkscale[gpu]')")
    home = _toolkit()
    if home is None:
        pytest.skip("no NVVM/NVRTC to compile with (pip install 'numba-cuda[cu13]')")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path))
    if home:
        env["CUDA_HOME"] = home
    proc = subprocess.run([sys.executable, "-c", f"CC = {CC!r}\n" + CHILD], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert sorted(got) == ["flat-float32", "flat-float64", "slab-float32", "slab-float64"]
    for name, row in got.items():
        assert row["bytes"] > 10_000, (name, row)
        if name.startswith("slab"):   # shared-memory slabs, barriers, atomic window sums
            assert row["barrier"] and row["atomic"] and row["shared"], (name, row)
