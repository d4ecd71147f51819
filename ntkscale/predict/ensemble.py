"""The infinite ensemble of infinitely wide networks: Gaussian outputs during and
after training (neural-tangents' ``predict.gp_inference`` and
``predict.gradient_descent_mse_ensemble``).

Lee et al. 2019 ("Wide Neural Networks of Any Depth Evolve as Linear Models
Under Gradient Descent", NeurIPS), Eqs. 12-16: with ``K`` the NNGP and ``Θ``
the NTK of the training set, ``E_t = I - exp(-η t Θ / N)`` and
``N = y_train.size``, the outputs on test inputs ``x`` at time ``t`` are
Gaussian with::

    mean  μ(x, t) = Θ(x, X) Θ^{-1} E_t Y
    cov   Σ(x, x', t) = K(x, x') + Θ(x, X) Θ^{-1} E_t K E_t Θ^{-1} Θ(X, x')
                        - (Θ(x, X) Θ^{-1} E_t K(X, x') + transpose)

for NTK (gradient-descent) training; for the NNGP (only the readout trained,
Bayesian posterior at ``t = ∞``) ``Θ`` is replaced by ``K`` and the
covariance is ``K(x, x') - K(x, X) K^{-1} (I - exp(-2 η t K / N)) K(X, x')``
(Rasmussen & Williams 2006, Eq. 2.24 at ``t = ∞``). ``get="ntkgp"`` in
``gp_inference`` is the GP posterior with the NTK as prior covariance (He et
al. 2020, "Bayesian Deep Ensembles via the Neural Tangent Kernel").
"""

from __future__ import annotations

import collections
import math
from functools import lru_cache
from typing import Any, Callable, Dict, Optional, Tuple, Union

from ..errors import InputError
from .dynamics import (ArrayOrScalar, Axes, Gaussian, Targets, as_times, cho_solver, eigenbasis, expm1_flow,
                       inv_expm1_flow, is_array, make_2d, native, zip_cov)

Get = Union[None, str, Tuple[str, ...]]
_KERNELS = ("nngp", "ntk")


def canonical_get(get: Get, allowed: Tuple[str, ...] = _KERNELS) -> Tuple[bool, Tuple[str, ...]]:
    """``(get was a single string, names)``; ``None`` means ``("nngp", "ntk")``."""
    if get is None:
        return False, _KERNELS
    single = isinstance(get, str)
    names = (get,) if single else tuple(get)
    if not names:
        raise InputError("get is empty; ask for 'nngp', 'ntk' or both")
    names = tuple(str(g).lower() for g in names)
    if len(set(names)) < len(names):
        raise InputError(f"every entry of get must be unique; got {names}")
    for g in names:
        if g not in allowed:
            raise InputError(f"get={g!r} is not available here; choose from {', '.join(map(repr, allowed))}")
    return single, names


_TUPLES: Dict[Tuple[str, ...], Any] = {}


def package(single: bool, names: Tuple[str, ...], out: Dict[str, Any]) -> Any:
    """One value for a single ``get``, else a ``Gaussians`` namedtuple in ``get``
    order (neural-tangents' ``get_namedtuple('Gaussians')``)."""
    if single:
        return out[names[0]]
    if names not in _TUPLES:
        _TUPLES[names] = collections.namedtuple("Gaussians", names)
    return _TUPLES[names](*(out[g] for g in names))


def kernel_part(k: Any, g: str) -> Any:
    """``k`` itself when it is an array, else its ``nngp``/``ntk`` attribute."""
    if is_array(k):
        return k
    value = getattr(k, g, None)
    if value is None:
        raise InputError(f"the kernel given has no {g!r} part; pass a Kernel with .{g} (e.g. kernel_fn(x1, x2))")
    return value


# ------------------------------------------------------------ gp_inference
def gp_inference(k_train_train: Any, y_train: Any, diag_reg: float = 0., diag_reg_absolute_scale: bool = False,
                 trace_axes: Axes = (-1,)) -> Callable[..., Any]:
    """Posterior of the NNGP, of the NTK ensemble trained to convergence, or of the
    NTK-GP (neural-tangents' ``predict.gp_inference``; Lee et al. 2019, Eqs.
    13 and 16 at ``t = ∞``; He et al. 2020 for ``"ntkgp"``).

    ``k_train_train``: an array, or a ``Kernel`` with ``.nngp``/``.ntk`` (the
    NTK covariance needs both). Returns ``predict_fn(get=None,
    k_test_train=None, k_test_test=None)``: the mean (or a :class:`Gaussian`
    when ``k_test_test`` is given) for each of ``get``; ``k_test_train=None``
    gives the train set (``N(y_train, 0)``).
    """
    xp = native(y_train)
    targets = Targets(tuple(y_train.shape), trace_axes)

    @lru_cache(2)
    def solve(g: str):
        return cho_solver(make_2d(kernel_part(k_train_train, g), xp), diag_reg, diag_reg_absolute_scale, xp,
                          what=f"the training {g.upper()} kernel")

    @lru_cache(2)
    def k_inv_y(g: str):
        return solve(g)(targets.flat(y_train, xp))

    def predict_fn(get: Get = None, k_test_train: Any = None, k_test_test: Any = None) -> Any:
        """Test-set posterior mean [and covariance] for each of ``get``."""
        single, names = canonical_get(get, _KERNELS + ("ntkgp",))
        out = {}
        for g in names:
            k = "ntk" if g == "ntkgp" else g
            k_dd = kernel_part(k_train_train, k)
            if k_test_train is None:
                mean = xp.asarray(y_train).astype(k_dd.dtype)
                out[g] = mean if k_test_test is None else Gaussian(mean, xp.zeros_like(k_dd))
                continue
            k_td_full = kernel_part(k_test_train, k)
            k_td = make_2d(k_td_full, xp)
            mean = targets.unflat(k_td @ k_inv_y(k), (), tuple(k_td_full.shape[::2]), xp)
            if k_test_test is None:
                out[g] = mean
                continue
            prior = "ntk" if g == "ntkgp" else "nngp"
            if g == "ntk" and (is_array(k_train_train) or is_array(k_test_train)):
                raise InputError("the NTK posterior covariance needs both NNGP and NTK kernels: pass "
                                 "k_train_train and k_test_train as Kernels with .nngp and .ntk")
            k_tt = make_2d(kernel_part(k_test_test, prior), xp)
            prior_td = make_2d(kernel_part(k_test_train, prior), xp)
            inv_prior_dt = solve(k)(prior_td.T)                    # K_k^{-1} K_prior(X, x)
            if g in ("nngp", "ntkgp"):
                cov = k_tt - k_td @ inv_prior_dt
            else:
                term_1 = solve("ntk")(k_td.T)                       # Θ^{-1} Θ(X, x)
                nngp_dd = make_2d(kernel_part(k_train_train, "nngp"), xp)
                term_2 = k_td @ inv_prior_dt                        # Θ(x, X) Θ^{-1} K(X, x)
                cov = term_1.T @ (nngp_dd @ term_1) - (term_2 + term_2.T) + k_tt
            rows = tuple(k_td_full.shape[::2])
            out[g] = Gaussian(mean, zip_cov(cov.reshape(rows + rows), 0, xp))
        return package(single, names, out)

    return predict_fn


# ------------------------------------------------------------ ensemble
def _dependency(names: Tuple[str, ...], compute_cov: bool) -> Tuple[str, ...]:
    """Kernels needed: the NNGP for ``"nngp"`` and for any covariance."""
    dep: Tuple[str, ...] = ()
    if "nngp" in names or ("ntk" in names and compute_cov):
        dep += ("nngp",)
    if "ntk" in names:
        dep += ("ntk",)
    return dep


def _as_dict(result: Any, names: Tuple[str, ...]) -> Dict[str, Any]:
    """A ``kernel_fn(x1, x2, get)`` result as ``{name: array}`` (a namedtuple, a
    plain tuple in ``get`` order, or one array)."""
    if hasattr(result, "_asdict"):
        d = result._asdict()
        return {g: d[g] for g in names}
    if isinstance(result, tuple):
        return dict(zip(names, result))
    return {names[0]: result}


def gradient_descent_mse_ensemble(kernel_fn: Any, x_train: Any, y_train: Any, learning_rate: float = 1.,
                                  diag_reg: float = 0.0, diag_reg_absolute_scale: bool = False,
                                  trace_axes: Axes = (-1,), **kernel_fn_train_train_kwargs: Any) -> Callable[..., Any]:
    """Mean and covariance of the outputs of an infinite ensemble of infinitely
    wide networks trained by gradient descent on the MSE, at any time
    (neural-tangents' ``predict.gradient_descent_mse_ensemble``; Lee et al.
    2019, Eqs. 12-16).

    ``kernel_fn(x1, x2, get, **kwargs)`` (e.g. ``stax.serial(...)[2]``) gives
    the kernels; ``learning_rate``, ``diag_reg`` and the time unit are as in
    :func:`~ntkscale.predict.gradient_descent_mse`. Returns
    ``predict_fn(t=None, x_test=None, get=None, compute_cov=False,
    **kernel_fn_test_test_kwargs)``: for each of ``get`` (``"nngp"``,
    ``"ntk"``; None: both, as a ``Gaussians`` namedtuple) the mean, or a
    :class:`Gaussian` ``(mean, covariance)`` when ``compute_cov``, on
    ``x_test`` (None: the train set, without ``diag_reg``) at time(s) ``t``
    (``None``: ``t = ∞``; an array of times adds leading axes).
    """
    xp = native(y_train)
    targets = Targets(tuple(y_train.shape), trace_axes)
    size = int(math.prod(y_train.shape))
    y_flat = targets.flat(y_train, xp)
    k_dd_cache: Dict[str, Any] = {}

    def train_kernels(names: Tuple[str, ...]) -> Any:
        missing = tuple(g for g in names if g not in k_dd_cache)
        if missing:
            got = kernel_fn(x_train, None, missing[0] if len(missing) == 1 else missing,
                            **kernel_fn_train_train_kwargs)
            k_dd_cache.update(_as_dict(got, missing))
        return collections.namedtuple("Kernel", "nngp ntk")(k_dd_cache.get("nngp"), k_dd_cache.get("ntk"))

    @lru_cache(2)
    def eigenspace(g: str):
        k2 = make_2d(getattr(train_kernels((g,)), g), xp)
        return eigenbasis(k2, diag_reg, diag_reg_absolute_scale, xp)

    @lru_cache(4)
    def predict_inf(names: Tuple[str, ...]):
        return gp_inference(train_kernels(names), y_train, diag_reg, diag_reg_absolute_scale, trace_axes)

    def kernels(names: Tuple[str, ...], x_test: Any, compute_cov: bool, test_kwargs: Dict[str, Any]):
        dep = _dependency(names, compute_cov)
        k_dd = train_kernels(dep)
        if x_test is None:
            return k_dd, None, (True if compute_cov else None)
        kwargs = dict(kernel_fn_train_train_kwargs)
        for key, value in test_kwargs.items():
            if key in kwargs and not is_array(value) and kwargs[key] != value:
                raise InputError(f"kernel_fn keyword {key}={value!r} differs from the train-train call's "
                                 f"{kwargs[key]!r}; use the same value for both")
            kwargs[key] = value
        k_td = _as_dict(kernel_fn(x_test, x_train, dep if len(dep) > 1 else dep[0], **kwargs), dep)
        nngp_tt = kernel_fn(x_test, None, "nngp", **kwargs) if compute_cov else None
        return k_dd, k_td, nngp_tt

    def mean_at(g, evals, evecs, tt, k_td):
        if k_td is None:
            return xp.einsum("ji,ti,ik->tjk", evecs, -expm1_flow(evals, tt, size, xp), evecs.T @ y_flat)
        ktd = make_2d(k_td[g], xp)
        inner = xp.einsum("ji,ti,ik->tjk", evecs, -inv_expm1_flow(evals, tt, size, xp), evecs.T @ y_flat)
        return xp.matmul(ktd, inner)

    def cov_at(g, evals, evecs, tt, k_dd, k_td, nngp_tt):
        nngp_dd = make_2d(k_dd.nngp, xp)
        lam = xp.maximum(evals, 0.0)
        if k_td is None:
            if g == "nngp":
                return xp.einsum("ji,ti,ki->tjk", evecs, lam * xp.exp(-2 * lam * tt / size), evecs)
            flow = xp.einsum("mi,ti,ki->tmk", evecs, xp.exp(-lam * tt / size), evecs)
            return xp.matmul(xp.matmul(flow, nngp_dd), xp.swapaxes(flow, 1, 2))
        tt_prior = make_2d(nngp_tt, xp)[None]
        ktd = make_2d(k_td[g], xp)
        vk = evecs.T @ ktd.T                                         # V^T K_g(X, x)
        if g == "nngp":
            f = -inv_expm1_flow(evals, 2 * tt, size, xp)
            return tt_prior - xp.einsum("ik,ti,il->tkl", vk, f, vk)
        f = -inv_expm1_flow(evals, tt, size, xp)
        term_1 = xp.einsum("mi,ti,il->tml", evecs, f, vk)            # Θ^{-1} E_t Θ(X, x)
        nngp_td = make_2d(k_td["nngp"], xp)
        term_2 = xp.matmul(xp.swapaxes(term_1, 1, 2), nngp_td.T[None])  # Θ(x, X) Θ^{-1} E_t K(X, x)
        term_2 = term_2 + xp.swapaxes(term_2, 1, 2)
        return xp.matmul(xp.swapaxes(term_1, 1, 2), xp.matmul(nngp_dd, term_1)) - term_2 + tt_prior

    def predict_fn(t: Optional[ArrayOrScalar] = None, x_test: Any = None, get: Get = None,
                   compute_cov: bool = False, **kernel_fn_test_test_kwargs: Any) -> Any:
        """Mean [and covariance] on ``x_test`` (None: train set) at time(s) ``t``."""
        single, names = canonical_get(get)
        k_dd, k_td, nngp_tt = kernels(names, x_test, compute_cov, kernel_fn_test_test_kwargs)
        if t is None:
            td = None if k_td is None else collections.namedtuple("Kernel", "nngp ntk")(
                k_td.get("nngp"), k_td.get("ntk"))
            return predict_inf(_dependency(names, compute_cov))(get=get if get is not None else names,
                                                                k_test_train=td, k_test_test=nngp_tt)
        t_shape, tt = as_times(t, learning_rate)
        first = k_dd[0] if k_dd[0] is not None else k_dd[1]
        ref = first if k_td is None else next(iter(k_td.values()))
        rows = tuple(ref.shape[::2])
        out = {}
        for g in names:
            evals, evecs = eigenspace(g)
            tt_x = xp.asarray(tt, dtype=evecs.dtype)
            mean = targets.unflat(mean_at(g, evals, evecs, tt_x, k_td), t_shape, rows, xp)
            if not compute_cov:
                out[g] = mean
                continue
            cov = cov_at(g, evals, evecs, tt_x, k_dd, k_td, nngp_tt)
            cov = zip_cov(cov.reshape(t_shape + rows + rows), len(t_shape), xp)
            out[g] = Gaussian(mean, cov)
        return package(single, names, out)

    return predict_fn
