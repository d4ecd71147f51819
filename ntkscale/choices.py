"""The names every part of ntkscale agrees on, each defined once.

Config validation, the kernel API, the store, the solvers and the CLI all check
their options against these tuples; nothing else spells them out.
"""

from __future__ import annotations

#: Kernels a network gives: the NNGP covariance and the neural tangent kernel.
KERNELS = ("nngp", "ntk")
#: Floating dtypes of stored Grams and of computation.
DTYPES = ("float32", "float64")
#: Array backends a worker may compute with (auto: CuPy on GPU workers).
BACKENDS = ("auto", "numpy", "cupy")
#: Solver methods.
METHODS = ("auto", "cg", "cholesky")
#: CG preconditioners.
PRECONDITIONERS = ("nystrom", "pivoted_cholesky", "none")
#: How Gram products are formed: from the store, streamed from the kernel, or chosen.
MODES = ("stored", "streamed", "auto")
#: Where the solver's Gram products (CG) and Cholesky tiles run: in the driver process,
#: or as tasks on the run's Dask cluster (auto: the cluster when it is not the local one).
PRODUCTS = ("auto", "driver", "cluster")
#: How several ridges are solved.
RIDGE_PATHS = ("auto", "multishift", "sequential", "batched", "per_ridge")
#: Learning tasks.
TASKS = ("auto", "classification", "regression")
