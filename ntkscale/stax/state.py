"""Frozen kernel state passed from layer to layer.

Mirrors neural-tangents' ``Kernel``: a layer maps a state to a new state and
never mutates it (``layer(state, xp) -> state``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

Array = Any


@dataclasses.dataclass(frozen=True)
class KernelState:
    """Covariances of a pair of input batches after some layers.

    Attributes:
      nngp: cross covariance Σ(x1, x2). Flat nets: shape ``(n1, n2)``, or ``(n,)``
        when ``diagonal_batch`` (then entry i is Σ(x_i, x_i)). Image nets
        append the spatial axes: ``(n1, n2, H, H', W, W')`` for full spatial
        covariance, ``(n1, n2, H, W)`` when ``diagonal_spatial``.
      ntk: Θ(x1, x2) with the shape of ``nngp``; ``None`` when only the NNGP
        is requested (the NTK recursion is then skipped).
      var1: self covariances Σ(x, x) of x1, per input (and per pixel for images:
        ``(n1, H, W)``; full spatial blocks are never needed for them). After
        ``AvgPool``/``GlobalAvgPool`` a pair state has ``var1 = var2 = None``:
        pooled self-variances need each image's full self-covariance, which
        the image evaluator (``engine.reference_image``) tracks and supplies per layer.
      var2: the same for x2; ``None`` when ``diagonal_batch``.
      diagonal_batch: entries pair x_i with itself only (posterior variances).
      width: number of features (channels) entering the next layer, used by the
        ``"standard"`` parameterization; ``None`` when unknown.
      spatial: ``(H, W)`` for image kernels, ``None`` for flat ones.
      diagonal_spatial: image kernels that track matching pixels only.
      symmetric: ``x2 is x1`` (the matrix is symmetric; its diagonal pairs are exact).
      gaussian: the activations are mean-zero Gaussian (after Dense/Conv, kept by
        linear layers), which ``FanInSum``/``FanInConcat`` and ``LayerNorm``
        require, as neural-tangents' ``is_gaussian``.
      diag_offset: when not None, entry ``(i, i + diag_offset)`` pairs an input with
        itself (``x2 is x1``; ``Dropout(mode="train")`` scales those entries).
      self_cov1: for a pair state entering a layer that needs it
        (``GlobalSelfAttention``: its attention weights of an input depend on that
        input's whole position-pair covariance), Σ(x, x) of every x1 over all
        position pairs, ``(n1, H, H, W, W)``; the image evaluator supplies it from
        the self trajectory. ``None`` otherwise.
      self_cov2: the same for x2.
      pattern1: the graph patterns (``Aggregate``, neural-tangents' ``pattern=``)
        of the x1 rows of this state, ``(n1, W, W)`` for sequences (``(n1, H, W, H,
        W)`` for images); ``None`` when the call has none.
      pattern2: the same for x2 (``None`` for a ``diagonal_batch`` state).

    Sequences (NWC) run as ``1 × W`` images: ``spatial = (1, W)``.
    """

    nngp: Array
    ntk: Optional[Array]
    var1: Array
    var2: Optional[Array]
    diagonal_batch: bool = False
    width: Optional[int] = None
    spatial: Optional[Tuple[int, int]] = None
    diagonal_spatial: bool = False
    symmetric: bool = False
    gaussian: bool = False
    diag_offset: Optional[int] = None
    self_cov1: Optional[Array] = None
    self_cov2: Optional[Array] = None
    pattern1: Optional[Array] = None
    pattern2: Optional[Array] = None

    def replace(self, **changes: Any) -> "KernelState":
        return dataclasses.replace(self, **changes)

    def pair_variances(self, xp: Any) -> Tuple[Array, Array]:
        """Variances ``(q, q')`` broadcastable against ``nngp``.

        For every entry of ``nngp`` they are Σ(x, x) and Σ(x', x') at the
        positions that entry pairs.
        """
        v1, v2 = self.var1, self.var2
        if self.spatial is None:
            return (v1, v1) if self.diagonal_batch else (v1[:, None], v2[None, :])
        n1, h, w = v1.shape
        if self.diagonal_batch:
            if self.diagonal_spatial:
                return v1, v1
            return xp.reshape(v1, (n1, h, 1, w, 1)), xp.reshape(v1, (n1, 1, h, 1, w))
        n2 = v2.shape[0]
        if self.diagonal_spatial:
            return (
                xp.reshape(v1, (n1, 1, h, w)),
                xp.reshape(v2, (1, n2, h, w)),
            )
        return (
            xp.reshape(v1, (n1, 1, h, 1, w, 1)),
            xp.reshape(v2, (1, n2, 1, h, 1, w)),
        )

    def map_variances(self, fn: Any) -> "KernelState":
        """Apply ``fn`` to both self-variance arrays."""
        return self.replace(
            var1=fn(self.var1),
            var2=None if self.var2 is None else fn(self.var2),
        )
