"""Published figures ntkscale's projections are compared with, each with its source.

``python -m benchmarks.literature [--calibration ...]`` prints the CIFAR-10
table of ``ntkscale.costs.projection`` next to these figures.
"""

from __future__ import annotations

import sys
from typing import Any, Dict

from ntkscale.costs.projection import main as projection_main

#: Published GPU figures, as quoted in issue 7: the Myrtle kernels of Shankar et al. 2020,
#: computed with neural-tangents; CNTK-GAP 21 of Arora et al. 2019, computed with their own
#: CuPy code (``code`` says which).
NT_PUBLISHED: Dict[str, Dict[str, Any]] = {
    "myrtle5": {"source": "Shankar et al. 2020, Neural Kernels Without Tangents (ICML), neural-tangents compute figures; quoted in ntkscale issue 7",
                "gpu_hours": 316, "n": 60000, "device": "V100", "dtype": "float64", "code": "neural-tangents",
                "what": "Myrtle-5 NTK/NNGP on 60k CIFAR-10 (60k x 60k), 316 V100 GPU-hours, float64"},
    "myrtle7": {"source": "Shankar et al. 2020, Neural Kernels Without Tangents (ICML), neural-tangents compute figures; quoted in ntkscale issue 7",
                "gpu_hours": 330, "n": 60000, "device": "V100", "dtype": "float64", "code": "neural-tangents",
                "what": "Myrtle-7 on 60k CIFAR-10 (60k x 60k), 330 V100 GPU-hours, float64"},
    "myrtle10": {"source": "Shankar et al. 2020, Neural Kernels Without Tangents (ICML), neural-tangents compute figures; quoted in ntkscale issue 7",
                "gpu_hours": 508, "n": 60000, "device": "V100", "dtype": "float64", "code": "neural-tangents",
                 "what": "Myrtle-10 on 60k CIFAR-10 (60k x 60k), 508 V100 GPU-hours, float64"},
    "cntk-gap21": {"source": "Arora et al. 2019, On Exact Computation with an Infinitely Wide Neural Net (NeurIPS), CNTK-GAP timing; quoted in ntkscale issue 7",
                   "ms_per_entry": 2.7, "device": "V100", "dtype": "float32",
                   "code": "Arora et al.'s CuPy CNTK code (not neural-tangents)",
                   "what": "CNTK-GAP 21 layers on CIFAR-10, 2.7 ms per kernel entry on a V100, float32"},
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(projection_main(published=NT_PUBLISHED))
