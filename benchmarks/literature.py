"""Published figures ntkscale's projections are compared with, each with its source.

``python -m benchmarks.literature [--calibration ...]`` prints the CIFAR-10
table of ``ntkscale.costs.projection`` next to these figures.
"""

from __future__ import annotations

import sys
from typing import Any, Dict

from ntkscale.costs.projection import main as projection_main

#: Where the figures are printed: neural-tangents' own README (PyPI long description of
#: neural-tangents 0.6.5, the version the peer venv runs; the same text is on GitHub).
NT_README = "neural-tangents README (PyPI neural-tangents 0.6.5 description)"

#: Published GPU figures, each with the words it is read from. Both are neural-tangents'
#: own: the Myrtle GPU-hours (section "Performance / Myrtle network": "With NVIDIA V100
#: 64-bit precision, nt took 316/330/508 GPU-hours on full 60k CIFAR-10 dataset for
#: Myrtle-5/7/10 kernels"; the architecture is Shankar et al. 2020's) and the 21-layer
#: CNN-GAP rate (section "Performance / CNN with pooling": 21 x [Conv 3x3 SAME, Relu],
#: GlobalAvgPool, inputs 3x32x32, "Milliseconds / NTK entry" 2.7001 on an NVIDIA V100
#: in 32-bit, "tested using version 0.2.1"). Issue 7 quoted the CNN figure as Arora et
#: al. 2019's; the README says it is neural-tangents'.
NT_PUBLISHED: Dict[str, Dict[str, Any]] = {
    "myrtle5": {"source": f"{NT_README}, Performance / Myrtle network", "gpu_hours": 316, "n": 60000,
                "device": "V100", "dtype": "float64", "code": "neural-tangents",
                "what": "Myrtle-5 kernel on full 60k CIFAR-10, 316 V100 GPU-hours, 64-bit"},
    "myrtle7": {"source": f"{NT_README}, Performance / Myrtle network", "gpu_hours": 330, "n": 60000,
                "device": "V100", "dtype": "float64", "code": "neural-tangents",
                "what": "Myrtle-7 kernel on full 60k CIFAR-10, 330 V100 GPU-hours, 64-bit"},
    "myrtle10": {"source": f"{NT_README}, Performance / Myrtle network", "gpu_hours": 508, "n": 60000,
                 "device": "V100", "dtype": "float64", "code": "neural-tangents",
                 "what": "Myrtle-10 kernel on full 60k CIFAR-10, 508 V100 GPU-hours, 64-bit"},
    "cntk-gap21": {"source": f"{NT_README}, Performance / CNN with pooling (tested with neural-tangents 0.2.1)",
                   "ms_per_entry": 2.7001, "device": "V100", "dtype": "float32", "code": "neural-tangents 0.2.1",
                   "what": "21-layer CNN-GAP NTK, 3x32x32 inputs, 2.7001 ms per NTK entry on a V100, 32-bit"},
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(projection_main(published=NT_PUBLISHED))
