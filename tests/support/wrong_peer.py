"""A benchmark peer that speaks the side protocol but computes a wrong kernel
(ntkscale's, scaled by 1.01): the fair protocol must refuse to time against it."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import side_server  # noqa: E402


class ScaledSide(side_server.OursSide):
    name = "scaled"

    def compute(self):
        return super().compute() * self.x1.dtype.type(1.01)


if __name__ == "__main__":
    side_server.OursSide = ScaledSide
    side_server.serve("ours")
