"""Independent re-derivations the kernel tests compare with: the textbook ReLU
recursion (closed form) and the empirical NTK of a finite MLP by explicit
backpropagation. Written from the papers, not from ntkscale's code."""

from __future__ import annotations

import math

import numpy as np

from ntkscale.stax.spec import entry


def arccos_relu(q1, q2, c):
    """Cho & Saul (2009) first-order arc-cosine kernel and its derivative kernel."""
    norm = np.sqrt(np.outer(q1, q2))
    cos = np.clip(c / norm, -1, 1)
    theta = np.arccos(cos)
    k = norm * (np.sin(theta) + (np.pi - theta) * cos) / (2 * np.pi)
    kdot = (np.pi - theta) / (2 * np.pi)
    return k, kdot


def relu_net_closed_form(x1, x2, depth, W_std, b_std):
    """NNGP/NTK of depth x [Dense, Relu] + Dense by the textbook recursion
    (Jacot et al. 2018; Lee et al. 2018)."""
    d = x1.shape[1]
    w2, b2 = W_std ** 2, (b_std or 0.0) ** 2
    s = w2 * (x1 @ x2.T) / d + b2
    q1 = w2 * np.sum(x1 ** 2, 1) / d + b2
    q2 = w2 * np.sum(x2 ** 2, 1) / d + b2
    theta = s.copy()
    for _ in range(depth):
        k, kdot = arccos_relu(q1, q2, s)
        s = w2 * k + b2
        theta = s + w2 * theta * kdot
        q1 = w2 * q1 / 2 + b2
        q2 = w2 * q2 / 2 + b2
    return s, theta


#: d activation(x) / dx for the activations :func:`empirical_ntk` backpropagates through.
ACTIVATION_DERIVATIVES = {
    "Relu": lambda x, p: (x > 0).astype(float),
    "LeakyRelu": lambda x, p: np.where(x > 0, 1.0, p["alpha"]),
    "ABRelu": lambda x, p: np.where(x > 0, p["b"], p["a"]),
    "Abs": lambda x, p: np.sign(x),
    "Erf": lambda x, p: p["a"] * p["b"] * 2 / math.sqrt(math.pi) * np.exp(-(p["b"] * x) ** 2),
    "Sin": lambda x, p: p["a"] * p["b"] * np.cos(p["b"] * x + p["c"]),
    "Identity": lambda x, p: np.ones_like(x),
}


def empirical_ntk(layer, params, x1, x2):
    """Empirical NTK of a scalar-output MLP (Dense/activation, "ntk"
    parameterization) by explicit backpropagation: Σ over parameters of
    ∂f(x1)/∂p · ∂f(x2)/∂p."""
    spec = layer.spec

    def grads(x):
        acts = [x]
        for (name, kw), p in zip(spec, params):
            acts.append(entry(name).impl(kw).apply(p, acts[-1]))
        # backward
        out = []
        delta = np.ones((x.shape[0], 1))
        idx = len(spec) - 1
        for (name, kw), p in reversed(list(zip(spec, params))):
            h_in = acts[idx]
            if name == "Dense":
                W, b = p
                n_in = W.shape[0]
                scale = kw["W_std"] / np.sqrt(n_in)
                gW = scale * np.einsum("ni,nj->nij", h_in, delta)
                out.append(gW.reshape(x.shape[0], -1))
                if kw["b_std"] is not None:
                    out.append(kw["b_std"] * delta)
                delta = scale * delta @ W.T
            else:
                delta = delta * ACTIVATION_DERIVATIVES[name](h_in, kw)
            idx -= 1
        return np.concatenate(out, axis=1)

    return grads(x1) @ grads(x2).T
