"""Kernel-regression solvers: dense in-memory, blocked CG, tiled Cholesky."""
