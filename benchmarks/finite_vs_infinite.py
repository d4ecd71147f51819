"""The finite network beside its kernel: full-batch gradient descent on the MSE for growing
widths against the infinite-width NTK prediction at the same times.

    python benchmarks/finite_vs_infinite.py                 # widths 64..1024, 3 seeds, 1000 steps
    python benchmarks/finite_vs_infinite.py --quick         # widths 32..512, 2 seeds, 300 steps

Setup: scikit-learn's 8x8 digits (1797 images, /16), ``default_rng(0).permutation``, 128
train and 256 test images, 10 one-hot classes centred at 0; FC ReLU depth 2 in the NTK
parameterization (``[Dense(w, W_std=sqrt 2, b_std=0.1), Relu] x 2 + Dense(10)``, the
networks ``stax.serial`` builds with ``init_fn``/``apply_fn``); full-batch gradient
descent on ``L = ||f(X) - Y||² / (2N)``, ``N = Y.size``, with learning rate ``η = 0.1 x
max_learning_rate(NTK)``; step ``s`` is time ``t = s`` in neural-tangents' convention
(the continuous flow ``exp(-η t Θ / N)`` matches ``s`` discrete steps when
``η λ_max / N`` is small: here 0.2, a few per cent on the top eigendirection; at
``0.5 x max_learning_rate`` the discretisation alone would open a gap of order one
whatever the width).

What is compared (Jacot et al. 2018, Thm. 2; Lee et al. 2019, Fig. 1 and Thm. 2.1):

* outputs: each trained network against the kernel prediction from the *same* initial
  outputs, ``gradient_descent_mse(Θ, Y, η)(t, f_train(0), f_test(0), Θ_*)`` with the exact
  infinite-width NTK ``Θ``; the relative gap falls like ``1/sqrt(width)``;
* test MSE and accuracy against training time, per width (mean over seeds), beside the
  infinite ensemble mean (``f(0) = 0``);
* the empirical NTK's relative change during training ``||Θ̂_T - Θ̂_0||_F / ||Θ̂_0||_F``
  (``empirical_ntk_fn`` on the train inputs): it falls like ``1/sqrt(width)`` — the
  kernel freezes as the width grows.

The training gradients come from hand-written backpropagation through Dense and ReLU
(the two layers used here): ntkscale's finite networks are plain NumPy, and an autodiff
library (JAX, PyTorch) would be a heavy dependency for a benchmark; the backpropagation
is checked against central differences before any training. Results: results/
finite_vs_infinite.json and plots/finite_vs_infinite.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, machine, print_table, save_result  # noqa: E402

from ntkscale import stax  # noqa: E402
from ntkscale.predict import gradient_descent_mse, max_learning_rate  # noqa: E402
from ntkscale.stax.empirical import empirical_ntk_fn  # noqa: E402


def data(n_train: int = 128, n_test: int = 256) -> Tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))
    x, y = d.data[perm] / 16.0, d.target[perm]
    Y = np.eye(10)[y] - 0.1
    return x[:n_train], Y[:n_train], x[-n_test:], Y[-n_test:]


def network(width: int):
    w = np.sqrt(2.0)
    return stax.serial(stax.Dense(width, W_std=w, b_std=0.1), stax.Relu(),
                       stax.Dense(width, W_std=w, b_std=0.1), stax.Relu(), stax.Dense(10, W_std=w, b_std=0.1))


def loss_and_grads(layers: Sequence[Any], params: List[Any], x: np.ndarray, Y: np.ndarray
                   ) -> Tuple[float, np.ndarray, List[Any]]:
    """``L = ||f - Y||² / (2N)``, the outputs ``f`` and ``∂L/∂θ`` per layer, by backpropagation
    through Dense (NTK parameterization: ``z = (W_std / sqrt(fan_in)) h W + b_std b``) and Relu."""
    acts = [x]
    for layer, p in zip(layers, params):
        acts.append(layer.apply(p, acts[-1]))
    f = acts[-1]
    g = (f - Y) / Y.size
    grads: List[Any] = [()] * len(layers)
    for i in reversed(range(len(layers))):
        layer, h = layers[i], acts[i]
        if layer.layer_name == "Dense":
            W, _ = params[i]
            s, bs = layer.params["W_std"] / np.sqrt(W.shape[0]), layer.params["b_std"]
            grads[i] = (s * (h.T @ g), bs * g.sum(axis=0))
            g = s * (g @ W.T)
        elif layer.layer_name == "Relu":
            g = g * (h > 0)
        else:
            raise ValueError(f"this benchmark's backpropagation covers Dense and Relu, not {layer.layer_name}")
    return float(np.sum((f - Y) ** 2) / (2 * Y.size)), f, grads


def check_gradients() -> float:
    """Backpropagation against central differences on a small network: max relative error."""
    init_fn, apply_fn, _ = network(7)
    rng = np.random.default_rng(1)
    x, Y = rng.standard_normal((5, 4)), rng.standard_normal((5, 10))
    _, params = init_fn(0, x.shape)
    params = [tuple(np.array(a) for a in p) for p in params]
    _, _, grads = loss_and_grads(apply_fn.layers, params, x, Y)
    worst, h = 0.0, 1e-6
    for i, p in enumerate(params):
        for j, a in enumerate(p):
            for idx in list(np.ndindex(a.shape))[:6]:
                old = a[idx]
                a[idx] = old + h
                lp = loss_and_grads(apply_fn.layers, params, x, Y)[0]
                a[idx] = old - h
                lm = loss_and_grads(apply_fn.layers, params, x, Y)[0]
                a[idx] = old
                fd = (lp - lm) / (2 * h)
                worst = max(worst, abs(fd - grads[i][j][idx]) / max(abs(fd), 1e-8))
    return worst


def train(width: int, seed: int, x, Y, xt, lr: float, record: Sequence[int]) -> Dict[str, Any]:
    """Full-batch gradient descent; outputs at the ``record`` steps and the NTK change."""
    init_fn, apply_fn, _ = network(width)
    _, params = init_fn(seed, x.shape)
    params = [tuple(np.array(a) for a in p) for p in params]
    ntk_fn = empirical_ntk_fn(apply_fn)
    theta0 = ntk_fn(x, None, params)
    f_train0, f_test0 = apply_fn(params, x), apply_fn(params, xt)
    outs, losses = {}, {}
    for step in range(max(record) + 1):
        if step in record:
            outs[step] = apply_fn(params, xt)
        loss, _, grads = loss_and_grads(apply_fn.layers, params, x, Y)
        if step in record:
            losses[step] = loss
        if step == max(record):
            break
        params = [tuple(a - lr * g for a, g in zip(p, gp)) for p, gp in zip(params, grads)]
    theta = ntk_fn(x, None, params)
    change = float(np.linalg.norm(theta - theta0) / np.linalg.norm(theta0))
    return {"f_train0": f_train0, "f_test0": f_test0, "outputs": outs, "losses": losses, "ntk_change": change}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="widths 32..512, 2 seeds, 300 steps")
    ap.add_argument("--widths", type=int, nargs="+")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    widths = args.widths or ([32, 128, 512] if args.quick else [64, 256, 1024])
    seeds = args.seeds or (2 if args.quick else 3)
    steps = args.steps or (300 if args.quick else 1000)
    grad_err = check_gradients()
    print(f"backpropagation vs central differences: max relative error {grad_err:.2g}")
    assert grad_err < 1e-5, grad_err
    x, Y, xt, Yt = data()
    _, _, kernel_fn = network(1)
    K, Kx = kernel_fn(x, None, get="ntk"), kernel_fn(xt, x, get="ntk")
    lr = 0.1 * max_learning_rate(K, y_train_size=Y.size)
    record = sorted({0, *np.unique(np.logspace(0, np.log10(steps), 12).astype(int)).tolist()})
    times = np.asarray(record, dtype=np.float64)
    fn = gradient_descent_mse(K, Y, learning_rate=lr)
    mean_inf = fn(times, fx_train_0=None, fx_test_0=np.zeros_like(Yt), k_test_train=Kx)        # ensemble mean
    rows, curves = [], {}
    for w in widths:
        t0 = time.perf_counter()
        gaps, changes, mse, acc = [], [], [], []
        for seed in range(seeds):
            run = train(w, seed, x, Y, xt, lr, record)
            lin = fn(times, fx_train_0=run["f_train0"], fx_test_0=run["f_test0"], k_test_train=Kx)[1]
            net = np.stack([run["outputs"][s] for s in record])
            gaps.append([np.linalg.norm(net[i] - lin[i]) / np.linalg.norm(lin[i]) for i in range(len(record))])
            changes.append(run["ntk_change"])
            mse.append([float(np.mean((net[i] - Yt) ** 2)) for i in range(len(record))])
            acc.append([float(np.mean(net[i].argmax(1) == Yt.argmax(1))) for i in range(len(record))])
        curves[w] = {"gap": np.mean(gaps, axis=0).tolist(), "test_mse": np.mean(mse, axis=0).tolist(),
                     "test_accuracy": np.mean(acc, axis=0).tolist()}
        rows.append({"width": w, "output gap at t_max": float(np.mean(gaps, axis=0)[-1]),
                     "max output gap": float(np.max(np.mean(gaps, axis=0))),
                     "NTK relative change": float(np.mean(changes)), "NTK change sd": float(np.std(changes)),
                     "test MSE at t_max": curves[w]["test_mse"][-1], "seconds": time.perf_counter() - t0})
        print(f"width {w}: output gap {rows[-1]['max output gap']:.3g}, NTK change {rows[-1]['NTK relative change']:.3g}"
              f" ({rows[-1]['seconds']:.0f} s)")
    print_table([{k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                list(rows[0]))
    # both should fall like 1/sqrt(width): slopes of log-log fits
    lw = np.log([r["width"] for r in rows])
    slope_change = float(np.polyfit(lw, np.log([r["NTK relative change"] for r in rows]), 1)[0])
    slope_gap = float(np.polyfit(lw, np.log([r["max output gap"] for r in rows]), 1)[0])
    print(f"log-log slopes against width: NTK change {slope_change:.2f}, output gap {slope_gap:.2f} (-0.5 expected)")
    kernel_curve = {"test_mse": [float(np.mean((mean_inf[i] - Yt) ** 2)) for i in range(len(record))],
                    "test_accuracy": [float(np.mean(mean_inf[i].argmax(1) == Yt.argmax(1)))
                                      for i in range(len(record))]}
    result = {"machine": machine(), "widths": widths, "seeds": seeds, "steps": steps, "learning_rate": lr,
              "times": record, "rows": rows, "curves": {str(k): v for k, v in curves.items()},
              "kernel": kernel_curve, "slope_ntk_change": slope_change, "slope_output_gap": slope_gap,
              "backprop_check": grad_err}
    print(f"wrote {save_result('finite_vs_infinite' + ('_quick' if args.quick else ''), result)}")
    print(f"wrote {plot(result, HERE / 'plots' / ('finite_vs_infinite' + ('_quick' if args.quick else '') + '.png'))}")
    ok = slope_change < -0.3 and rows[-1]["NTK relative change"] < rows[0]["NTK relative change"]
    if not ok:
        print("FAILED: the NTK's relative change does not fall with width", file=sys.stderr)
    return 0 if ok else 1


def plot(result: Dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(result["times"], dtype=float)
    show = t > 0
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), dpi=110)
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(result["widths"])))
    for c, w in zip(colours, result["widths"]):
        cur = result["curves"][str(w)]
        axes[0].plot(t[show], np.asarray(cur["test_mse"])[show], "o-", ms=3, color=c, label=f"width {w}")
        axes[1].plot(t[show], np.asarray(cur["gap"])[show], "o-", ms=3, color=c, label=f"width {w}")
    axes[0].plot(t[show], np.asarray(result["kernel"]["test_mse"])[show], "k--", label="NTK (infinite width)")
    axes[0].set(xscale="log", xlabel="training time t (steps)", ylabel="test MSE",
                title="test error during training")
    axes[1].set(xscale="log", yscale="log", xlabel="training time t (steps)",
                ylabel="||f_net - f_NTK|| / ||f_NTK|| (test)", title="network vs its NTK prediction")
    widths = np.asarray(result["widths"], dtype=float)
    ch = np.asarray([r["NTK relative change"] for r in result["rows"]])
    axes[2].loglog(widths, ch, "o-", label="empirical NTK change")
    axes[2].loglog(widths, ch[0] * np.sqrt(widths[0] / widths), "k:", label="1/sqrt(width)")
    axes[2].set(xlabel="width", ylabel="||Θ_T - Θ_0|| / ||Θ_0||", title="kernel change during training")
    axes[2].minorticks_off()
    axes[2].set_xticks(widths, [str(int(w)) for w in widths])
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
