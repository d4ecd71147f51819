"""Generate neural-tangents reference kernels for ntkscale's tests.

Run with the neural-tangents venv's python (see benchmarks/nt_venv.sh):

    $(bash benchmarks/nt_venv.sh) tests/reference/generate_nt_reference.py
    $(bash benchmarks/nt_venv.sh) tests/reference/generate_nt_reference.py --digits

Writes tests/reference/nt_reference.npz (float64, jax_enable_x64). For every
case NAME the archive holds

    NAME__x1, NAME__x2     inputs (x2 is a copy of x1 when NAME__x2_is_none == 1)
    NAME__x2_is_none       1 if the kernel was computed as kernel_fn(x1, None)
    NAME__nngp, NAME__ntk  the reference kernels, shape (n1, n2)
    NAME__spec             JSON string: [[stax layer name, {keyword: value}], ...]

plus ``__cases__`` (JSON list of case names) and ``__meta__`` (JSON: versions).
Spec keyword names are exactly neural-tangents' stax keyword names; tuples are
stored as JSON lists and ``None`` as ``null``. ``build(spec)`` below turns a
spec back into ``stax.serial(...)``.

``--digits`` instead computes the CNTK-GAP depth-3 NTK regression test
accuracy on sklearn's digits (nothing is stored).
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "nt_reference.npz")
SQRT2 = math.sqrt(2.0)

_TUPLE_KEYS = {"filter_shape", "strides", "window_shape", "s"}


def build(spec):
    """spec -> stax.serial(*layers)."""
    layers = []
    for name, kwargs in spec:
        kw = {k: (tuple(v) if k in _TUPLE_KEYS and v is not None else v)
              for k, v in kwargs.items()}
        layers.append(getattr(stax, name)(**kw))
    return stax.serial(*layers)


# ----------------------------------------------------------------- layer helpers
def dense(out_dim, W_std, b_std, parameterization="ntk"):
    return ["Dense", {"out_dim": out_dim, "W_std": W_std, "b_std": b_std,
                      "parameterization": parameterization}]


def conv(out_chan, filter_shape=(3, 3), padding="SAME", W_std=SQRT2, b_std=0.1,
         strides=None, parameterization="ntk"):
    kw = {"out_chan": out_chan, "filter_shape": list(filter_shape),
          "strides": None if strides is None else list(strides),
          "padding": padding, "W_std": W_std, "b_std": b_std,
          "parameterization": parameterization}
    return ["Conv", kw]


def avgpool(window_shape, strides=None, padding="VALID"):
    return ["AvgPool", {"window_shape": list(window_shape),
                        "strides": None if strides is None else list(strides),
                        "padding": padding}]


RELU = ["Relu", {}]


def relu_fc(depth, W_std=SQRT2, b_std=0.1, width=512):
    spec = []
    for _ in range(depth):
        spec += [dense(width, W_std, b_std), RELU]
    return spec + [dense(1, W_std, b_std)]


def act_fc(act):
    d = lambda o: dense(o, 1.5, 0.2)  # noqa: E731
    return [d(512), act, d(512), act, d(1)]


ACTIVATIONS = {
    "erf": ["Erf", {}],
    "erf_abc": ["Erf", {"a": 0.7, "b": 1.3, "c": 0.2}],
    "leakyrelu": ["LeakyRelu", {"alpha": 0.1}],
    "abrelu": ["ABRelu", {"a": -0.3, "b": 1.2}],
    "abs": ["Abs", {}],
    "gelu": ["Gelu", {"approximate": False}],
    "sin": ["Sin", {"a": 1.0, "b": 1.0, "c": 0.0}],
    "sin_abc": ["Sin", {"a": 0.5, "b": 2.0, "c": 0.3}],
    "identity": ["Identity", {}],
    "relu": RELU,
}


def standard_fc(b_std):
    p = "standard"
    return [dense(64, 1.3, b_std, p), RELU, dense(32, 1.3, b_std, p), RELU,
            dense(1, 1.3, b_std, p)]


def conv_net(n_blocks=2, conv_kw=None, act=RELU, between=None, head="gap",
             out_chan=8, readout=(SQRT2, 0.1)):
    conv_kw = dict(conv_kw or {})
    spec = []
    for i in range(n_blocks):
        if i > 0 and between is not None:
            spec.append(between)
        spec += [conv(out_chan, **conv_kw), act]
    spec.append(["GlobalAvgPool", {}] if head == "gap" else ["Flatten", {}])
    return spec + [dense(1, readout[0], readout[1],
                         conv_kw.get("parameterization", "ntk"))]


def myrtle5_8x8(width=16, W_std=SQRT2, b_std=0.0, num_classes=10):
    """neural-tangents' Myrtle-5 (Shankar et al. 2020; layer_factor[5] = [2, 1, 1]).

    The original, for 32x32 inputs, ends with AvgPool((2, 2), strides=(2, 2)) x3
    after the third stage (8 -> 1 pixels). On 8x8 inputs the three stage pools
    already reach 1x1, so the final pooling is a single AvgPool here.
    """
    c = lambda: conv(width, (3, 3), "SAME", W_std, b_std)  # noqa: E731
    pool = avgpool((2, 2), (2, 2), "VALID")
    spec = [c(), RELU] * 2 + [pool]
    spec += [c(), RELU] * 1 + [pool]
    spec += [c(), RELU] * 1 + [pool]
    return spec + [["Flatten", {}], dense(num_classes, W_std, b_std)]


# ---------------------------------------------------------------------- inputs
def make_cases():
    rng = np.random.default_rng(0)
    d = 7
    fc_x1 = rng.standard_normal((5, d))
    fc_x2 = rng.standard_normal((3, d))
    a = rng.standard_normal(d)
    b = rng.standard_normal(d)
    # zero row, duplicate row (a twice), antiparallel (-a), parallel (3a)
    sp_x1 = np.stack([a, np.zeros(d), -a, 3.0 * a, a, b])
    sp_x2 = np.stack([a, np.zeros(d), -2.0 * b])
    im_x1 = rng.standard_normal((3, 6, 6, 2))
    im_x2 = rng.standard_normal((2, 6, 6, 2))
    my_x1 = rng.standard_normal((3, 8, 8, 3))
    my_x2 = rng.standard_normal((2, 8, 8, 3))

    cases = []  # (name, spec, x1, x2 or None)

    for depth in (1, 2, 3):
        cases.append((f"fc_relu_depth{depth}", relu_fc(depth), fc_x1, fc_x2))
        cases.append((f"fc_relu_depth{depth}_self", relu_fc(depth), fc_x1, None))
    for key, act in ACTIVATIONS.items():
        if key == "relu":
            continue
        cases.append((f"fc_act_{key}", act_fc(act), fc_x1, fc_x2))
    cases.append(("fc_act_erf_self", act_fc(ACTIVATIONS["erf"]), fc_x1, None))
    cases.append(("fc_relu_depth2_bnone", relu_fc(2, b_std=None), fc_x1, fc_x2))
    cases.append(("fc_relu_depth2_b0", relu_fc(2, b_std=0.0), fc_x1, fc_x2))
    for tag, bs in (("b01", 0.1), ("bnone", None), ("b0", 0.0)):
        cases.append((f"fc_standard_{tag}", standard_fc(bs), fc_x1, fc_x2))
    cases.append(("fc_standard_b01_self", standard_fc(0.1), fc_x1, None))

    # special input structure: zero row, duplicates, +-x, 3x
    cases.append(("fc_special_relu_depth3", relu_fc(3), sp_x1, sp_x2))
    cases.append(("fc_special_relu_depth3_self", relu_fc(3), sp_x1, None))
    for key, act in ACTIVATIONS.items():
        cases.append((f"fc_special_act_{key}_self", act_fc(act), sp_x1, None))
    cases.append(("fc_special_standard_b01_self", standard_fc(0.1), sp_x1, None))

    # convolutions, NHWC
    cases.append(("conv_same_gap", conv_net(), im_x1, im_x2))
    cases.append(("conv_same_gap_self", conv_net(), im_x1, None))
    cases.append(("conv_same_flatten", conv_net(head="flatten"), im_x1, im_x2))
    cases.append(("conv_same_flatten_self", conv_net(head="flatten"), im_x1, None))
    cases.append(("conv_valid_gap", conv_net(conv_kw={"padding": "VALID"}), im_x1, im_x2))
    cases.append(("conv_valid_flatten",
                  conv_net(conv_kw={"padding": "VALID"}, head="flatten"), im_x1, im_x2))
    cases.append(("conv_circular_gap", conv_net(conv_kw={"padding": "CIRCULAR"}),
                  im_x1, im_x2))
    cases.append(("conv_circular_flatten",
                  conv_net(conv_kw={"padding": "CIRCULAR"}, head="flatten"), im_x1, im_x2))
    cases.append(("conv_strides2_gap", conv_net(conv_kw={"strides": (2, 2)}),
                  im_x1, im_x2))
    cases.append(("conv_strides2_flatten",
                  conv_net(conv_kw={"strides": (2, 2)}, head="flatten"), im_x1, im_x2))
    cases.append(("conv_avgpool_valid_gap",
                  conv_net(between=avgpool((2, 2), (2, 2), "VALID")), im_x1, im_x2))
    cases.append(("conv_avgpool_valid_flatten",
                  conv_net(between=avgpool((2, 2), (2, 2), "VALID"), head="flatten"),
                  im_x1, im_x2))
    cases.append(("conv_avgpool_same_gap",
                  conv_net(between=avgpool((2, 2), None, "SAME")), im_x1, im_x2))
    cases.append(("conv_filter32_gap", conv_net(conv_kw={"filter_shape": (3, 2)}),
                  im_x1, im_x2))
    cases.append(("conv_filter32_flatten",
                  conv_net(conv_kw={"filter_shape": (3, 2)}, head="flatten"),
                  im_x1, im_x2))
    cases.append(("conv_bnone_gap", conv_net(conv_kw={"b_std": None}, readout=(SQRT2, None)),
                  im_x1, im_x2))
    cases.append(("conv_erf_gap", conv_net(act=["Erf", {}]), im_x1, im_x2))
    cases.append(("conv_erf_flatten", conv_net(act=["Erf", {}], head="flatten"),
                  im_x1, im_x2))
    cases.append(("conv_depth3_gap", conv_net(n_blocks=3), im_x1, im_x2))
    cases.append(("conv_standard_gap",
                  conv_net(conv_kw={"parameterization": "standard", "W_std": 1.3}),
                  im_x1, im_x2))
    cases.append(("conv_standard_flatten",
                  conv_net(conv_kw={"parameterization": "standard", "W_std": 1.3},
                           head="flatten"), im_x1, im_x2))
    cases.append(("myrtle5", myrtle5_8x8(), my_x1, my_x2))
    cases.append(("myrtle5_self", myrtle5_8x8(), my_x1, None))
    return cases


def generate(out=OUT):
    arrays = {}
    names, skipped = [], []
    for name, spec, x1, x2 in make_cases():
        try:
            _, _, kernel_fn = build(spec)
            k = kernel_fn(jnp.asarray(x1), None if x2 is None else jnp.asarray(x2),
                          ("nngp", "ntk"))
            nngp = np.asarray(k[0], dtype=np.float64)
            ntk = np.asarray(k[1], dtype=np.float64)
        except Exception as e:  # unsupported by neural-tangents
            skipped.append((name, f"{type(e).__name__}: {e}"))
            print(f"SKIP {name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        assert nngp.shape == ntk.shape == (x1.shape[0], n2), (name, nngp.shape)
        bad = not (np.all(np.isfinite(nngp)) and np.all(np.isfinite(ntk)))
        print(f"{name:34s} nngp[0,0]={nngp[0, 0]: .6e} ntk[0,0]={ntk[0, 0]: .6e}"
              + ("  NON-FINITE" if bad else ""))
        arrays[f"{name}__x1"] = np.asarray(x1, np.float64)
        arrays[f"{name}__x2"] = np.asarray(x1 if x2 is None else x2, np.float64)
        arrays[f"{name}__x2_is_none"] = np.array(int(x2 is None), np.int64)
        arrays[f"{name}__nngp"] = nngp
        arrays[f"{name}__ntk"] = ntk
        arrays[f"{name}__spec"] = np.array(json.dumps(spec))
        names.append(name)
    import importlib.metadata as md
    meta = {"neural_tangents": md.version("neural-tangents"), "jax": jax.__version__,
            "jaxlib": md.version("jaxlib"), "numpy": np.__version__,
            "x64": True, "skipped": skipped}
    arrays["__cases__"] = np.array(json.dumps(names))
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {len(names)} cases, {len(skipped)} skipped, "
          f"{os.path.getsize(out) / 1024:.1f} KiB")


# ---------------------------------------------------------------------- digits
def digits_accuracy(n_sub=None, batch_size=100):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 8, 8, 1)
    perm = np.random.default_rng(0).permutation(len(X))
    tr, te = perm[:1200], perm[1200:]
    if n_sub is not None:  # subset: first n_sub train, proportional test
        tr, te = tr[:n_sub], te[: max(1, n_sub * 597 // 1200)]
    spec = []
    for _ in range(3):
        spec += [conv(1, (3, 3), "SAME", SQRT2, 0.1), RELU]
    spec += [["GlobalAvgPool", {}], dense(1, SQRT2, 0.1)]
    _, _, kernel_fn = build(spec)
    kfn = jax.jit(kernel_fn, static_argnames="get")

    def gram(a, b, symmetric=False):
        # manual blocking (nt.batch needs the block size to divide both sizes);
        # the last block is padded by repeating rows so only one shape compiles
        B = batch_size
        pad = lambda z: np.concatenate([z, np.repeat(z[-1:], B - len(z), 0)])  # noqa: E731
        K = np.zeros((len(a), len(b)))
        for i in range(0, len(a), B):
            ai = pad(a[i:i + B])
            for j in range(0, len(b), B):
                if symmetric and j < i:
                    continue
                k = np.asarray(kfn(ai, pad(b[j:j + B]), get="ntk"))
                K[i:i + B, j:j + B] = k[: len(a[i:i + B]), : len(b[j:j + B])]
        if symmetric:
            iu = np.triu_indices(len(a), 1)
            blk = np.arange(len(a)) // B
            upper = blk[:, None] <= blk[None, :]
            K = np.where(upper, K, K.T)
            assert np.all(np.isfinite(K[iu]))
        return K

    t0 = time.time()
    k_tt = gram(X[tr], X[tr], symmetric=True)
    t1 = time.time()
    k_st = gram(X[te], X[tr])
    t2 = time.time()
    Y = np.eye(10)[y[tr]] - 0.1
    reg = 1e-6 * np.mean(np.diag(k_tt))
    alpha = np.linalg.solve(k_tt + reg * np.eye(len(tr)), Y)
    pred = np.argmax(k_st @ alpha, axis=1)
    acc = float(np.mean(pred == y[te]))
    print(json.dumps({"digits_cntk_gap_depth3_ntk_test_acc": acc, "n_train": len(tr),
                      "n_test": len(te), "seconds_train_gram": round(t1 - t0, 1),
                      "seconds_test_gram": round(t2 - t1, 1), "spec": spec}))
    return acc


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--digits", action="store_true",
                    help="compute the digits CNTK accuracy instead of the npz")
    ap.add_argument("--digits-subset", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args()
    if args.digits:
        digits_accuracy(args.digits_subset, args.batch_size)
    else:
        generate(args.out)
