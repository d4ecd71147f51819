"""Reference values the kernel tests compare with, and the one tolerance policy for them.

Two kinds of reference:

* **neural-tangents 0.6.5** values, ``tests/reference/nt_reference.npz`` and
  ``nt_conv_extra.npz``, generated in a separate venv by
  ``tests/reference/generate_nt_reference.py`` / ``generate_nt_conv_extra.py``
  (CI does not need neural-tangents): :data:`NT`, :data:`NT_CONV_EXTRA`,
  :func:`case_names`, :func:`load_case`, :func:`assert_matches_nt`;
* ntkscale's own **in-memory** ``kernel_fn`` on the data a store was computed
  from: :func:`in_memory_kernels`, :func:`assert_matches_in_memory`.

Tolerance policy (every comparison with a reference goes through this module):

==========================  =========================================================
against                     tolerance
==========================  =========================================================
neural-tangents (float64)   rtol 1e-10; rtol 1e-7 on (anti)parallel input pairs (an
                            input with itself, x and -x/2, zero inputs: there the
                            arc-cosine is at its endpoint and neural-tangents' own
                            values carry ~3e-8 relative rounding error,
                            NT-CONVENTIONS); plus an absolute floor 1e-13 * max|ref|
                            for entries near zero.
in-memory, float64          rtol 1e-11, no absolute floor: the same code, only the
                            block order of the sums differs.
in-memory, float32          rtol 2e-5, atol 1e-6.
==========================  =========================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import pytest

from ntkscale import stax
from tests.support.nets import LAYERS
from tests.support.paths import REFERENCE

#: rtol against neural-tangents off / on (anti)parallel pairs, and the absolute floor (x max|ref|)
NT_RTOL, NT_RTOL_PARALLEL, NT_FLOOR = 1e-10, 1e-7, 1e-13
#: ``assert_allclose`` keywords against the in-memory kernel, by dtype
IN_MEMORY_TOL = {"float64": dict(rtol=1e-11, atol=0.0), "float32": dict(rtol=2e-5, atol=1e-6)}


def _load(name: str) -> Optional[np.lib.npyio.NpzFile]:
    path = REFERENCE / f"{name}.npz"
    return np.load(path) if path.exists() else None


#: neural-tangents values for the flat and conv cases (None if the file is missing)
NT = _load("nt_reference")
#: more conv cases: normalize_edges, CIRCULAR/strided pooling, Dense and activations on images, ...
NT_CONV_EXTRA = _load("nt_conv_extra")
#: residual blocks, FanInConcat/FanInProd, LayerNorm and Dropout (issue 12; generate_nt_branching.py)
NT_BRANCHING = _load("nt_branching")
#: skip a test when the neural-tangents reference file is missing
needs_nt = pytest.mark.skipif(NT is None, reason="reference file missing")
needs_nt_branching = pytest.mark.skipif(NT_BRANCHING is None, reason="branching reference file missing")
needs_nt_conv_extra = pytest.mark.skipif(NT_CONV_EXTRA is None, reason="extra reference file missing")


class Case(NamedTuple):
    """One reference case: the layer spec, its inputs and neural-tangents' kernels."""

    spec: list
    x1: np.ndarray
    x2: Optional[np.ndarray]
    nngp: np.ndarray
    ntk: np.ndarray


def case_names(data: Optional[np.lib.npyio.NpzFile] = NT, prefixes: tuple = ()) -> List[str]:
    """The case names of a reference file, sorted, optionally only those that
    start with one of ``prefixes``; [] when the file is missing."""
    if data is None:
        return []
    return sorted(n for n in json.loads(str(data["__cases__"])) if not prefixes or n.startswith(prefixes))


def load_case(name: str, data: Optional[np.lib.npyio.NpzFile] = None) -> Case:
    """Case ``name`` of ``data`` (default :data:`NT`)."""
    data = NT if data is None else data
    x2 = None if int(data[f"{name}__x2_is_none"]) else data[f"{name}__x2"]
    return Case(json.loads(str(data[f"{name}__spec"])), data[f"{name}__x1"], x2,
                data[f"{name}__nngp"], data[f"{name}__ntk"])


def parallel_pairs(x1: np.ndarray, x2: Optional[np.ndarray]) -> np.ndarray:
    """Boolean (len(x1), len(x2)) mask of (anti)parallel input pairs, each input
    flattened (a whole image is one vector); a zero input counts as parallel to all."""
    a = x1.reshape(len(x1), -1)
    b = a if x2 is None else x2.reshape(len(x2), -1)
    n1, n2 = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a @ b.T) / np.maximum(np.outer(n1, n2), 1e-300)
    zero = (n1 == 0)[:, None] | (n2 == 0)[None, :]
    return (np.abs(np.abs(cos) - 1) < 1e-12) | zero


def assert_matches_nt(out, ref: np.ndarray, x1: np.ndarray, x2: Optional[np.ndarray]) -> None:
    """``out`` equals neural-tangents' ``ref`` for inputs ``x1``, ``x2`` within the policy above."""
    out = np.asarray(out)
    rtol = np.where(parallel_pairs(x1, x2), NT_RTOL_PARALLEL, NT_RTOL)
    tol = rtol * np.abs(ref) + NT_FLOOR * np.abs(ref).max()
    err = np.abs(out - ref)
    bad = err > tol
    assert not bad.any(), (f"{bad.sum()} entries differ; worst relative error "
                           f"{np.max(err / np.maximum(np.abs(ref), 1e-300)):.3g} (scale {np.abs(ref).max():.3g})")


def assert_case_matches_nt(name: str, fast: bool, data: Optional[np.lib.npyio.NpzFile] = None) -> None:
    """The reference case ``name``: its spec's ``kernel_fn`` (``fast`` or the reference path)
    gives neural-tangents' NNGP and NTK within the policy above."""
    spec, x1, x2, nngp, ntk = load_case(name, data)
    out = stax.from_spec(spec)[2](x1, x2, ("nngp", "ntk"), fast=fast)
    assert_matches_nt(out[0], nngp, x1, x2)
    assert_matches_nt(out[1], ntk, x1, x2)


def in_memory_kernels(data: Dict[str, Path], which: str = "train", layers=LAYERS) -> Dict[str, np.ndarray]:
    """``kernel_fn`` of ``layers`` in memory on the .npy inputs of ``data``:
    nngp, ntk and their diagonals for the train Gram (x vs x) or the test one (xt vs x)."""
    kfn = stax.from_spec(layers)[2]
    x = np.load(data["x"], allow_pickle=False)
    x1 = np.load(data["xt"], allow_pickle=False) if which == "test" else x
    nngp, ntk = kfn(x1, None if which == "train" else x, get=("nngp", "ntk"))
    dn, dt = kfn.diag(x1, get=("nngp", "ntk"))
    return {"nngp": nngp, "ntk": ntk, "diag_nngp": dn, "diag_ntk": dt}


def assert_matches_in_memory(got, want: np.ndarray, dtype: str = "float64", err_msg: str = "") -> None:
    """A Gram (or diagonal) read from a store equals the in-memory kernel within the policy above."""
    np.testing.assert_allclose(np.asarray(got), want, err_msg=err_msg, **IN_MEMORY_TOL[dtype])
