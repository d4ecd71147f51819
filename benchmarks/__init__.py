"""ntkscale's benchmark suite: ``python -m benchmarks [--quick] [--only NAME[,NAME]] [--list]``.

The individual scripts (bench_*.py, scaling.py) also run on their own; see
benchmarks/README.md.
"""
