"""Global self-attention and positional embeddings (neural-tangents 0.6.5 ``stax``).

Kernel maps from Hron, Bahri, Sohl-Dickstein and Novak (2020), "Infinite attention:
NNGP and NTK for deep attention networks" (ICML 2020, arXiv:2006.10540), in the form
neural-tangents implements. Positions are all spatial positions of a sequence (NWC)
or an image (NHWC), flattened to ``P = H·W``; ``K``, ``Θ`` are ``P × P`` per input pair.

``linear_scaling=True`` (keys and queries tied, logits scaled by ``1/n_chan_key``): as
the widths grow the logits of an input converge to ``QK·Σ̃(x, x)`` with
``QK = W_query_std·W_key_std`` and ``Σ̃`` the self-covariance interpolated with the
positional-embedding covariance ``R`` (below), so the attention weights are
deterministic, ``G(x) = φ(QK·Σ̃(x, x))`` (φ: softmax over the key positions,
identity, abs or relu), and with ``OV = W_out_std·W_value_std``::

    Σ_out(x, x') = OV² · G(x) M G(x')ᵀ + b²          M = Σ̃(x, x') if val_pos_emb else Σ(x, x')
    Θ_out(x, x') = OV² · G(x) N G(x')ᵀ + b² + 2·(Σ_out − b²)   N likewise from Θ

``linear_scaling=False`` (logits scaled by ``1/√n_chan_key``, independent keys and
queries) has a closed form for ``attention_mechanism="IDENTITY"`` only: with
``s = QK·OV``, ``⟨A, B⟩`` the sum over all position pairs::

    Σ_out = s²·⟨Σ̃, Σ̃ or Σ⟩·Σ̃ + b²
    Θ_out = s²·(D·Σ̃ + ⟨Σ̃, Σ̃ or Σ⟩·(Θ̃ + 4Σ̃)) + b²

with ``D = 2⟨Σ̃, Θ̃⟩`` (``val_pos_emb`` or no embedding) or ``⟨Σ̃, Θ⟩ + ⟨Σ, Θ̃⟩``.
Other mechanisms with ``linear_scaling=False`` have no known closed form and the kernel
refuses them, as neural-tangents does (``init_fn``/``apply_fn`` still work).

Positional embeddings (``pos_emb_type`` ``"SUM"``/``"CONCAT"``): random embeddings with
covariance ``R[p, p'] = f(Σ_axes |p − p'|^pos_emb_p_norm)`` (``f = pos_emb_decay_fn``;
``None`` is the indicator ``d == 0``, i.e. ``R = I``) enter keys and queries (and values
when ``val_pos_emb``): ``Σ̃ = a·Σ + c·R`` with ``(a, c) = (1, W_pos_emb_std²)`` for SUM and
``(C/(C+E), W_pos_emb_std²·E/(C+E))`` for CONCAT (``C`` input channels, ``E =
n_chan_pos_emb``, default ``C``). In a spec ``pos_emb_decay_fn`` is data, not a Python
function: ``None``, a name of :data:`DECAY_FUNCTIONS` or ``{"name": ..., parameter:
value}`` (see docs/layers-attention.md).
"""

from __future__ import annotations

import enum
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from ...errors import SpecError
from .base import LayerImpl, Shape, spatial_diagonal
from ..network import Layer, make_layer
from ..spec import Param, register
from ..state import KernelState


class AttentionMechanism(str, enum.Enum):
    """neural-tangents' ``stax.AttentionMechanism``: the map of the attention logits."""

    SOFTMAX = "SOFTMAX"
    IDENTITY = "IDENTITY"
    ABS = "ABS"
    RELU = "RELU"


class PositionalEmbedding(str, enum.Enum):
    """neural-tangents' ``stax.PositionalEmbedding``: how embeddings join the inputs."""

    NONE = "NONE"
    SUM = "SUM"
    CONCAT = "CONCAT"


#: ``pos_emb_decay_fn`` by name: ``f(d, **params)`` on the distances ``d = Σ|p − p'|^p_norm``
#: and the parameters each takes (with defaults). A spec is data, so the function is a name.
DECAY_FUNCTIONS: Dict[str, Tuple[Callable[..., Any], Dict[str, float]]] = {
    "exponential": (lambda d, length_scale: np.exp(-d / length_scale), {"length_scale": 1.0}),
    "power": (lambda d, exponent: (1.0 + d) ** (-exponent), {"exponent": 1.0}),
}


def decay_spec(value: Any, where: str = "GlobalSelfAttention") -> Optional[Dict[str, Any]]:
    """``pos_emb_decay_fn`` as ``None`` or ``{"name": ..., parameters...}`` (defaults filled)."""
    if value is None:
        return None
    if callable(value):
        raise SpecError(
            f"{where}(pos_emb_decay_fn=<function>): a network spec is data, so the decay is named, "
            f"not passed as a function; use None (the indicator d == 0), one of "
            f"{', '.join(map(repr, DECAY_FUNCTIONS))} or e.g. {{'name': 'exponential', "
            "'length_scale': 2.0}")
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise SpecError(f"{where}(pos_emb_decay_fn={value!r}) must be None, a name or a mapping "
                        "with a 'name' key")
    name = value["name"]
    if name not in DECAY_FUNCTIONS:
        raise SpecError(f"{where}(pos_emb_decay_fn={name!r}) is not a known decay; choose one of "
                        f"{', '.join(map(repr, DECAY_FUNCTIONS))} (or None)")
    defaults = DECAY_FUNCTIONS[name][1]
    unknown = sorted(set(value) - {"name"} - set(defaults))
    if unknown:
        raise SpecError(f"{where}(pos_emb_decay_fn={name!r}) has no parameter(s) "
                        f"{', '.join(map(repr, unknown))}; it takes {', '.join(map(repr, defaults))}")
    out: Dict[str, Any] = {"name": name}
    for key, default in defaults.items():
        v = value.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise SpecError(f"{where}(pos_emb_decay_fn={name!r}): {key} must be a positive number, "
                            f"got {v!r}")
        out[key] = float(v)
    return out


def position_covariance(hw: Tuple[int, int], p_norm: float, decay: Optional[Dict[str, Any]]) -> np.ndarray:
    """``R`` over the ``P = H·W`` positions (row-major): ``I`` or ``f(Σ_axes |Δ|^p_norm)``."""
    h, w = hw
    if decay is None:
        return np.eye(h * w)
    rows, cols = np.divmod(np.arange(h * w), w)
    d = (np.abs(rows[:, None] - rows[None, :]).astype(float) ** p_norm
         + np.abs(cols[:, None] - cols[None, :]).astype(float) ** p_norm)
    fn, _ = DECAY_FUNCTIONS[decay["name"]]
    return np.asarray(fn(d, **{k: v for k, v in decay.items() if k != "name"}), dtype=float)


def _to_pp(a: Any, xp: Any) -> Any:
    """``(..., H, H', W, W') -> (..., H·W, H'·W')``."""
    *b, h, h2, w, w2 = a.shape
    nb = len(b)
    a = xp.permute_dims(a, tuple(range(nb)) + (nb, nb + 2, nb + 1, nb + 3))
    return xp.reshape(a, tuple(b) + (h * w, h2 * w2))


def _from_pp(a: Any, hw: Tuple[int, int], xp: Any) -> Any:
    """Inverse of :func:`_to_pp`."""
    *b, _, _ = a.shape
    h, w = hw
    nb = len(b)
    a = xp.reshape(a, tuple(b) + (h, w, h, w))
    return xp.permute_dims(a, tuple(range(nb)) + (nb, nb + 2, nb + 1, nb + 3))


def _psum(a: Any, xp: Any) -> Any:
    """Sum over the position pair (the two trailing axes), kept for broadcasting."""
    return xp.sum(a, axis=(-2, -1), keepdims=True)


ATTENTION_PARAMS = {
    "n_chan_out": Param(None, "int", required=True),
    "n_chan_key": Param(None, "int", required=True),
    "n_chan_val": Param(None, "int", required=True),
    "n_heads": Param(None, "int", required=True),
    "linear_scaling": Param(True, "bool"),
    "W_key_std": Param(1.0, "float"),
    "W_value_std": Param(1.0, "float"),
    "W_query_std": Param(1.0, "float"),
    "W_out_std": Param(1.0, "float"),
    "b_std": Param(None, "float?"),
    "attention_mechanism": Param("SOFTMAX", "str", choices=tuple(m.value for m in AttentionMechanism)),
    "pos_emb_type": Param("NONE", "str", choices=tuple(m.value for m in PositionalEmbedding)),
    "pos_emb_p_norm": Param(2.0, "float"),
    "pos_emb_decay_fn": Param(None, "any"),
    "n_chan_pos_emb": Param(None, "int?"),
    "W_pos_emb_std": Param(1.0, "float"),
    "val_pos_emb": Param(False, "bool"),
    "batch_axis": Param(0, "any", supported=(0,)),
    "channel_axis": Param(-1, "any", supported=(-1,)),
}


@register("GlobalSelfAttention", ATTENTION_PARAMS)
class GlobalSelfAttentionImpl(LayerImpl):
    """``GlobalSelfAttention(...)`` as in neural-tangents 0.6.5 (see the module docstring)."""

    image_layer = True
    #: attention mixes every position with every other: the full position-pair covariance
    needs_full_spatial = True

    def __init__(self, params):
        super().__init__(params)
        self.decay = decay_spec(params["pos_emb_decay_fn"])
        self.mechanism = params["attention_mechanism"]
        self.pos_emb = params["pos_emb_type"]
        #: the attention weights of an input come from its own covariance (linear scaling)
        self.needs_self_cov = bool(params["linear_scaling"])

    def describe(self) -> str:
        p = self.params
        return (f"GlobalSelfAttention(attention_mechanism={self.mechanism!r}, "
                f"linear_scaling={p['linear_scaling']}, pos_emb_type={self.pos_emb!r})")

    def kernel_unsupported(self) -> Optional[str]:
        """Why the infinite-width kernel does not exist for these options (or None)."""
        if not self.params["linear_scaling"] and self.mechanism != "IDENTITY":
            return (f"attention_mechanism={self.mechanism!r} with linear_scaling=False has no known "
                    "closed-form kernel (neural-tangents raises NotImplementedError too); use "
                    "linear_scaling=True or attention_mechanism='IDENTITY'")
        return None

    # -- kernel ----------------------------------------------------------
    def _weights(self, width: Optional[int]) -> Tuple[float, float]:
        """Interpolation weights ``(a, c)`` of ``Σ̃ = a·Σ + c·R``."""
        p = self.params
        pe = p["W_pos_emb_std"] ** 2
        if self.pos_emb != "CONCAT":
            return 1.0, pe
        if p["n_chan_pos_emb"] is None:
            return 0.5, 0.5 * pe
        if width is None:
            raise SpecError(
                f"{self.describe()} with n_chan_pos_emb={p['n_chan_pos_emb']} needs the channel count "
                "of its inputs; give out_dim/out_chan to the layer before it")
        total = float(width + p["n_chan_pos_emb"])
        return width / total, pe * p["n_chan_pos_emb"] / total

    def _logit_map(self, a: Any, xp: Any) -> Any:
        a = (self.params["W_query_std"] * self.params["W_key_std"]) * a
        if self.mechanism == "SOFTMAX":
            a = xp.exp(a - xp.max(a, axis=-1, keepdims=True))
            return a / xp.sum(a, axis=-1, keepdims=True)
        if self.mechanism == "ABS":
            return xp.abs(a)
        if self.mechanism == "RELU":
            return xp.maximum(a, xp.zeros_like(a))
        return a

    def kernel(self, state: KernelState, xp: Any) -> KernelState:
        if state.spatial is None or state.diagonal_spatial:
            raise SpecError(f"{self.describe()} needs the full position-pair covariance (internal)")
        why = self.kernel_unsupported()
        if why is not None:
            raise SpecError(f"{self.describe()}: {why}")
        p = self.params
        hw = state.spatial
        K = _to_pp(state.nngp, xp)
        T = state.ntk
        if T is not None:
            T = _to_pp(T, xp) if hasattr(T, "shape") else xp.zeros_like(K) + T
        R = None
        if self.pos_emb != "NONE":
            R = xp.asarray(position_covariance(hw, p["pos_emb_p_norm"], self.decay), dtype=K.dtype)
        a, c = self._weights(state.width)

        def interp(m: Any) -> Any:
            return m if R is None else a * m + c * R

        b2 = 0.0 if p["b_std"] is None else p["b_std"] ** 2
        ov2 = (p["W_out_std"] * p["W_value_std"]) ** 2
        val = p["val_pos_emb"]
        if p["linear_scaling"]:
            if state.diagonal_batch:
                G1 = G2 = self._logit_map(interp(K), xp)
            else:
                G1 = xp.expand_dims(self._logit_map(interp(_to_pp(state.self_cov1, xp)), xp), axis=1)
                G2 = xp.expand_dims(self._logit_map(interp(_to_pp(state.self_cov2, xp)), xp), axis=0)
            G2t = xp.matrix_transpose(G2)

            def weigh(m: Any) -> Any:
                return xp.matmul(xp.matmul(G1, m), G2t)

            nngp = ov2 * weigh(interp(K) if val else K) + b2
            ntk = None if T is None else (ov2 * weigh(interp(T) if val else T) + b2
                                          + 2.0 * (nngp - b2))
        else:   # IDENTITY with 1/sqrt(n_chan_key) scaling
            s2 = (p["W_query_std"] * p["W_key_std"] * p["W_out_std"] * p["W_value_std"]) ** 2
            Ki = interp(K)
            dot = _psum(Ki * (Ki if val else K), xp)
            nngp = s2 * dot * Ki + b2
            ntk = None
            if T is not None:
                Ti = interp(T)
                if val or R is None:
                    nd = 2.0 * _psum(Ki * Ti, xp)
                else:
                    nd = _psum(Ki * T, xp) + _psum(K * Ti, xp)
                ntk = s2 * (nd * Ki + dot * (Ti + 4.0 * Ki)) + b2
        nngp = _from_pp(nngp, hw, xp)
        ntk = None if ntk is None else _from_pp(ntk, hw, xp)
        var1 = spatial_diagonal(nngp, xp) if state.diagonal_batch else None
        return state.replace(nngp=nngp, ntk=ntk, var1=var1, var2=None, width=p["n_chan_out"],
                             gaussian=True, self_cov1=None, self_cov2=None)

    def flops_per_entry(self, state_shape: Shape) -> float:
        positions = math.isqrt(int(np.prod(state_shape or (1,))))
        return 2.0 * (4.0 * positions ** 3 + 6.0 * positions ** 2)

    # -- finite width ------------------------------------------------------
    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape[:-1]) + (self.params["n_chan_out"],)

    def _n_pos_emb(self, c_in: int) -> int:
        n = self.params["n_chan_pos_emb"]
        return c_in if n is None else n

    def init(self, rng: np.random.Generator, input_shape: Shape):
        p = self.params
        c_in = int(input_shape[-1])
        c_keys = c_vals = c_in
        pos_emb = None
        if self.pos_emb != "NONE":
            e = self._n_pos_emb(c_in)
            if self.pos_emb == "SUM" and e != c_in:
                raise SpecError(f"{self.describe()}: SUM embeddings have n_chan_pos_emb={e} channels but "
                                f"the inputs have {c_in}; use n_chan_pos_emb=None or CONCAT")
            pos_emb = rng.standard_normal(tuple(input_shape[:-1]) + (e,))
            if self.pos_emb == "CONCAT":
                c_keys += e
                c_vals += e if p["val_pos_emb"] else 0
        heads, dk, dv = p["n_heads"], p["n_chan_key"], p["n_chan_val"]
        keys = rng.standard_normal((heads, c_keys, dk))
        values = rng.standard_normal((heads, c_vals, dv))
        w_out = rng.standard_normal((dv * heads, p["n_chan_out"]))
        b = None if p["b_std"] is None else rng.standard_normal((p["n_chan_out"],))
        queries = None if p["linear_scaling"] else rng.standard_normal((heads, c_keys, dk))
        return queries, keys, values, w_out, b, pos_emb

    def _embedding(self, pos_emb: np.ndarray) -> np.ndarray:
        p = self.params
        if self.decay is not None:
            R = position_covariance(pos_emb.shape[:2], p["pos_emb_p_norm"], self.decay)
            try:
                L = np.linalg.cholesky(R)
            except np.linalg.LinAlgError:
                raise SpecError(f"{self.describe()}: the positional covariance of pos_emb_decay_fn="
                                f"{self.decay} is not positive definite; choose another decay") from None
            h, w, e = pos_emb.shape
            pos_emb = (L @ pos_emb.reshape(h * w, e)).reshape(h, w, e)
        return pos_emb * p["W_pos_emb_std"]

    def apply(self, params: Any, x: np.ndarray) -> np.ndarray:
        p = self.params
        queries, keys_w, values_w, w_out, b, pos_emb = params
        n, h, w, _ = x.shape
        x_val = None
        if pos_emb is not None:
            emb = self._embedding(pos_emb)
            if self.pos_emb == "SUM":
                x_val = None if p["val_pos_emb"] else x
                x = x + emb[None]
            else:
                x_val = None if p["val_pos_emb"] else x
                x = np.concatenate([x, np.broadcast_to(emb[None], (n,) + emb.shape)], axis=-1)
        X = x.reshape(n, h * w, x.shape[-1])
        Xv = X if x_val is None else x_val.reshape(n, h * w, x_val.shape[-1])
        keys = np.einsum("npc,hcd->hnpd", X, keys_w)
        qs = keys if queries is None else np.einsum("npc,hcd->hnpd", X, queries)
        vals = np.einsum("npc,hcd->hnpd", Xv, values_w)
        dk = p["n_chan_key"]
        logits = qs @ np.swapaxes(keys, -1, -2)
        logits = logits / (X.shape[-1] * (dk if p["linear_scaling"] else math.sqrt(dk)))
        G = self._logit_map(logits, np)
        heads = np.moveaxis(G @ vals, 0, -1)                      # (n, P, dv, heads)
        heads = heads.reshape(n, h * w, -1)
        ov = p["W_out_std"] * p["W_value_std"]
        out = (heads @ w_out) * (ov / math.sqrt(heads.shape[-1] * Xv.shape[-1]))
        out = out.reshape(n, h, w, -1)
        return out if b is None else out + p["b_std"] * b


def GlobalSelfAttention(n_chan_out: int, n_chan_key: int, n_chan_val: int, n_heads: int,
                        linear_scaling: bool = True, W_key_std: float = 1.0,
                        W_value_std: float = 1.0, W_query_std: float = 1.0,
                        W_out_std: float = 1.0, b_std: Optional[float] = None,
                        attention_mechanism: str = "SOFTMAX", pos_emb_type: str = "NONE",
                        pos_emb_p_norm: float = 2, pos_emb_decay_fn: Any = None,
                        n_chan_pos_emb: Optional[int] = None, W_pos_emb_std: float = 1.0,
                        val_pos_emb: bool = False, batch_axis: int = 0,
                        channel_axis: int = -1) -> Layer:
    """Global scaled dot-product self-attention over all positions of NWC sequences or
    NHWC images (neural-tangents ``stax.GlobalSelfAttention``; Hron et al. 2020,
    "Infinite attention"). Same keywords, defaults and kernels; ``pos_emb_decay_fn``
    is a name from :data:`DECAY_FUNCTIONS` (a spec is data), ``attention_mechanism``
    and ``pos_emb_type`` take strings or the enums :class:`AttentionMechanism`,
    :class:`PositionalEmbedding`."""
    return make_layer("GlobalSelfAttention", dict(
        n_chan_out=n_chan_out, n_chan_key=n_chan_key, n_chan_val=n_chan_val, n_heads=n_heads,
        linear_scaling=linear_scaling, W_key_std=W_key_std, W_value_std=W_value_std,
        W_query_std=W_query_std, W_out_std=W_out_std, b_std=b_std,
        attention_mechanism=getattr(attention_mechanism, "value", attention_mechanism),
        pos_emb_type=getattr(pos_emb_type, "value", pos_emb_type), pos_emb_p_norm=pos_emb_p_norm,
        pos_emb_decay_fn=decay_spec(pos_emb_decay_fn), n_chan_pos_emb=n_chan_pos_emb,
        W_pos_emb_std=W_pos_emb_std, val_pos_emb=val_pos_emb, batch_axis=batch_axis,
        channel_axis=channel_axis))
