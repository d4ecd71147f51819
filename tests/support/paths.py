"""Where the repository, the reference values and the fixtures are.

Derived from this file, never from the working directory, so a test finds
them wherever it sits under ``tests/`` and wherever pytest was started.
"""

from pathlib import Path

#: the repository root (holds ``ntkscale/``, ``tests/``, ``deploy/``, ``benchmarks/``)
ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
#: neural-tangents reference values (``*.npz``) and the scripts that made them
REFERENCE = TESTS / "reference"
#: data written by earlier versions (e.g. a Gram store), kept unchanged
FIXTURES = TESTS / "fixtures"
