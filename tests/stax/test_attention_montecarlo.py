"""Monte Carlo: finite-width GlobalSelfAttention and Aggregate networks (init_fn/apply_fn on
NWC sequences) have output covariances that converge to the exact NNGP (Hron et al. 2020,
"Infinite attention"; Du et al. 2019, "Graph Neural Tangent Kernel")."""

import numpy as np
import pytest

from ntkscale import stax


def _empirical_nngp(net, x, draws, **kwargs):
    """Per draw (one finite-width network), the output covariance over its channels."""
    init_fn, apply_fn, _ = net
    covs = []
    for seed in range(draws):
        _, params = init_fn(seed, x.shape)
        f = apply_fn(params, x, **kwargs)
        covs.append(f @ f.T / f.shape[1])
    return np.stack(covs)


def _check(covs, exact, tol):
    """The mean over draws is within 4 standard errors (estimated from the draws) plus
    ``tol`` x scale (the O(1/width) bias of finite keys and layers) of the exact NNGP."""
    mean = covs.mean(axis=0)
    se = covs.std(axis=0, ddof=1) / np.sqrt(len(covs))
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    excess = (np.abs(mean - exact) - 4.0 * se) / scale
    assert excess.max() < tol, (f"worst relative error {np.max(np.abs(mean - exact) / scale):.3g}, "
                                f"standard error {np.max(se / scale):.3g}")


# (options, input channels, n_chan_key, n_chan_val, n_heads, draws). Linear scaling: wide
# keys make the attention weights deterministic (error ~ 1/sqrt(n_chan_key)); heads x values
# and the 1024 output channels average the rest. linear_scaling=False: the weights stay
# random and the kernel is their average over infinitely many heads (checked: 8 heads are
# 17 % off, 64 heads 2 %). Positional embeddings have as many channels as the inputs and
# their covariance W_pos_emb_std²·R is a many-channel limit: those cases take 512-channel inputs.
CASES = {
    "softmax_none": (dict(attention_mechanism="SOFTMAX"), 8, 2048, 64, 16, 8),
    "sqrt_identity": (dict(attention_mechanism="IDENTITY", linear_scaling=False), 8, 64, 16, 128, 8),
    "relu_concat_val": (dict(attention_mechanism="RELU", pos_emb_type="CONCAT", val_pos_emb=True),
                        512, 1024, 64, 16, 8),
    "identity_sum": (dict(attention_mechanism="IDENTITY", pos_emb_type="SUM", W_pos_emb_std=0.7),
                     512, 1024, 64, 16, 8),
    "abs_sum_decay": (dict(attention_mechanism="ABS", pos_emb_type="SUM",
                           pos_emb_decay_fn={"name": "exponential", "length_scale": 2.0}),
                      512, 1024, 64, 16, 8),
}
SLOW = {"relu_concat_val", "identity_sum", "abs_sum_decay"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_attention_nngp_matches_finite_width_covariance(name, rng):
    options, channels, n_key, n_val, heads, draws = CASES[name]
    att = stax.GlobalSelfAttention(1024, n_key, n_val, heads, W_key_std=1.2, W_query_std=0.8,
                                   W_value_std=1.1, b_std=0.1, **options)
    net = stax.serial(att, stax.GlobalAvgPool())
    x = rng.standard_normal((3, 5, channels))
    x[2] = -0.5 * x[0]
    covs = _empirical_nngp(net, x, draws=draws)
    _check(covs, net[2](x, None, "nngp"), 0.01)


@pytest.mark.slow
def test_transformer_preset_nngp(rng):
    net = stax.presets.transformer(1, width=256, n_heads=8, out_dim=512)
    x = rng.standard_normal((3, 4, 3))
    x[2] = -x[0]
    covs = _empirical_nngp(net, x, draws=6)
    _check(covs, net[2](x, None, "nngp"), 0.01)


@pytest.mark.parametrize("implementation", ["DENSE", "SPARSE"])
def test_aggregate_nngp_matches_finite_width_covariance(implementation, rng):
    net = stax.serial(stax.Dense(1024, W_std=1.3, b_std=0.1), stax.Relu(),
                      stax.Aggregate(implementation=implementation),
                      stax.Dense(1024, W_std=1.1, b_std=0.2), stax.Relu(), stax.Aggregate(implementation=implementation),
                      stax.GlobalAvgPool(), stax.Dense(1024))
    x = rng.standard_normal((3, 5, 4))
    dense = (rng.random((3, 5, 5)) < 0.5).astype(float)
    if implementation == "SPARSE":
        pattern = np.full((3, 25, 2), -1)
        for b in range(3):
            tails, heads = np.nonzero(dense[b])
            pattern[b, :len(tails)] = np.stack([tails, heads], axis=1)
    else:
        pattern = dense
    covs = _empirical_nngp(net, x, draws=8, pattern=pattern)
    exact = net[2](x, None, "nngp", pattern=(pattern, None))
    _check(covs, exact, 0.01)
