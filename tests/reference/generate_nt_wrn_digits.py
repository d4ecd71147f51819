"""neural-tangents 0.6.5 WideResNet NTK regression on sklearn's digits (issue 12 accuracy check).

Run with the neural-tangents venv's python (about 2.5 minutes on 2 idle cores):

    /root/.cache/ntkscale/nt-venv/bin/python tests/reference/generate_nt_wrn_digits.py

Network: neural-tangents' README ``WideResnet(block_size=1, k=1, num_classes=10)`` on 8×8×1
digits (``AvgPool((2, 2))`` where the README's 32×32 inputs take 8×8: the strides 1, 2, 2
take 8 pixels to 2), the case ``img_wide_resnet_8x8`` of generate_nt_branching.py
(= ``ntkscale.stax.presets.wide_resnet(1, 1, 10, pool=2)``), float64.

Data: ``load_digits``, pixels / 16, permutation ``numpy.random.default_rng(0)``, 1200 train
/ 597 test (the split of tests/stax/test_conv_digits.py). neural-tangents' exact kernel
costs ~1.7 ms per image pair here, so the full split (1.44 M pairs with the train Gram's
upper blocks only) takes about 40 minutes of both cores: this script runs the first
``N_TRAIN`` train and ``N_TEST`` test images of that split (sized to finish within 10
minutes); ``--full`` runs the whole 1200/597 split by blocks of 100 images, each saved
under ~/.cache/ntkscale/nt_wrn_digits_full (a killed run resumes), and writes
``nt_wrn_digits_full.npz`` instead (``seconds``: the kernel time of the last run only). Regression: ``nt.predict.gp_inference(k_train_train, y,
diag_reg=DIAG_REG)`` with one-hot targets minus 0.1, NTK mean on the test images.

Writes tests/reference/nt_wrn_digits.npz: ``n_train``, ``n_test``, ``diag_reg``,
``accuracy``, ``predictions`` (n_test × 10), ``k_test_train_head`` (the first 40 test rows
of the NTK test × train kernel), ``seconds`` (the kernel time) and ``__meta__``.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import neural_tangents as nt  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from generate_nt_branching import CASES, build  # noqa: E402

OUT = os.path.join(HERE, "nt_wrn_digits.npz")
N_TRAIN, N_TEST, DIAG_REG, BATCH = 240, 120, 1e-4, 20


def split():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1)
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:1200], perm[1200:]
    return x[tr], y[tr], x[te], y[te]


#: --full: blocks of this many images, each saved when done (resumable across runs)
FULL_BLOCK = 100
FULL_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ntkscale", "nt_wrn_digits_full")


def _ragged(raw_kfn, rows, cols):
    """``raw_kfn(rows, cols)`` by pieces of at most BATCH x BATCH images: nt.batch needs
    sizes its batch divides, and falls back to batches of one for the last 97 test rows."""
    return np.block([[np.asarray(raw_kfn(rows[a:a + BATCH], cols[c:c + BATCH], "ntk"))
                      for c in range(0, len(cols), BATCH)] for a in range(0, len(rows), BATCH)])


def blocked_kernels(kfn, raw_kfn, x_tr, x_te):
    """The train Gram (its upper blocks, mirrored) and the test x train kernel, by blocks
    of FULL_BLOCK images, each block saved in FULL_CACHE once computed: a killed run
    resumes where it stopped. Returns the kernels and the seconds spent in this run."""
    os.makedirs(FULL_CACHE, exist_ok=True)
    n, m, b = len(x_tr), len(x_te), FULL_BLOCK
    k_tr, k_te = np.empty((n, n)), np.empty((m, n))
    jobs = [("tr", i, j) for i in range(0, n, b) for j in range(i, n, b)]
    jobs += [("te", i, j) for i in range(0, m, b) for j in range(0, n, b)]
    spent = 0.0
    for done, (part, i, j) in enumerate(jobs):
        path = os.path.join(FULL_CACHE, f"{part}_{i}_{j}.npy")
        if not os.path.exists(path):
            t0 = time.time()
            rows = x_tr[i:i + b] if part == "tr" else x_te[i:i + b]
            cols = x_tr[j:j + b]
            ragged = len(rows) % BATCH or len(cols) % BATCH
            blk = _ragged(raw_kfn, rows, cols) if ragged else np.asarray(kfn(rows, cols, "ntk"))
            np.save(path + ".tmp.npy", blk)
            os.replace(path + ".tmp.npy", path)
            spent += time.time() - t0
            print(f"block {done + 1}/{len(jobs)} ({part} {i}:{j}) {time.time() - t0:.1f} s", flush=True)
        blk = np.load(path)
        if part == "tr":
            k_tr[i:i + b, j:j + b] = blk
            k_tr[j:j + b, i:i + b] = blk.T
        else:
            k_te[i:i + b, j:j + b] = blk
    return k_tr, k_te, spent


def main():
    full = "--full" in sys.argv[1:]
    n_train, n_test = (1200, 597) if full else (N_TRAIN, N_TEST)
    out = OUT.replace(".npz", "_full.npz") if full else OUT
    x_tr, y_tr, x_te, y_te = split()
    x_tr, y_tr, x_te, y_te = x_tr[:n_train], y_tr[:n_train], x_te[:n_test], y_te[:n_test]
    _, _, raw_kfn = build(CASES["img_wide_resnet_8x8"][1])
    kfn = nt.batch(raw_kfn, batch_size=BATCH, store_on_device=False)
    t0 = time.time()
    if full:
        k_tr, k_te, seconds = blocked_kernels(kfn, raw_kfn, x_tr, x_te)
    else:
        k_tr = np.asarray(kfn(x_tr, None, "ntk"))
        k_te = np.asarray(kfn(x_te, x_tr, "ntk"))
        seconds = time.time() - t0
    targets = np.eye(10)[y_tr] - 0.1
    predict = nt.predict.gp_inference(k_tr, targets, diag_reg=DIAG_REG)
    pred = np.asarray(predict("ntk", k_te))
    acc = float(np.mean(np.argmax(pred, axis=1) == y_te))
    print(f"neural-tangents WideResNet NTK: accuracy {acc:.4f} on {n_test} test images, "
          f"kernels {seconds:.0f} s")
    np.savez_compressed(out, n_train=n_train, n_test=n_test, diag_reg=DIAG_REG, accuracy=acc,
                        predictions=pred, k_test_train_head=k_te[:40], seconds=seconds,
                        __meta__=np.array(json.dumps({"neural_tangents": nt.__version__,
                                                      "jax": jax.__version__, "dtype": "float64"})))
    print("wrote", out)


if __name__ == "__main__":
    main()
