"""benchmarks/scale.py (the larger-than-RAM run of issue 17) cannot rot.

Fast: its data keep the held-out digits out of training and are deterministic, its
configs load with the real config parser, and its process-tree sampler sees a child's
memory. Slow (``-m slow``): the whole script end to end at n = 400 through the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import scale
from ntkscale.config import load_config
from tests.support.paths import ROOT


def test_held_out_digits_never_enter_training():
    (xtr, ytr), (xte, yte) = scale.mnist_sets(9000, 1000, holdout=500)
    assert xtr.shape == (9000, 784) and xte.shape == (1000, 784) and xtr.dtype == np.float64
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0
    # the first 4500 training rows are the originals, the next 4500 their first transform
    assert not np.array_equal(xtr[:4500], xtr[4500:9000])
    np.testing.assert_array_equal(ytr[:4500], ytr[4500:9000])
    # no test image (held-out original or its copy) equals any training image
    train_rows = {r.tobytes() for r in xtr}
    assert not any(r.tobytes() in train_rows for r in xte)
    (xtr2, _), _ = scale.mnist_sets(9000, 1000, holdout=500)
    np.testing.assert_array_equal(xtr, xtr2)          # deterministic


def test_shift_and_rotation_keep_the_digit():
    img = np.zeros((1, 28, 28))
    img[0, 10:18, 12:16] = 1.0
    shifted = scale.transform(img, 1, -2, 0)
    np.testing.assert_array_equal(shifted[0, 11:19, 10:14], 1.0)
    assert shifted.sum() == img.sum()
    rotated = scale.transform(img, 0, 0, 8)
    assert abs(rotated.sum() - img.sum()) < 0.05 * img.sum() and not np.array_equal(rotated, img)


@pytest.mark.parametrize("method", ["cg", "cholesky"])
def test_configs_load_with_the_real_parser(tmp_path, method):
    args = scale.argparse.Namespace(ridge=1e-6, tol=1e-6, rank=500, workers=2, memory_limit="4GiB",
                                    block_size=512 if method == "cg" else None, products="cluster")
    for name in ("train_x", "train_y", "test_x", "test_y"):
        np.save(tmp_path / f"{name}.npy", np.zeros((4, 784) if name.endswith("x") else 4))
    path = tmp_path / "config.yaml"
    path.write_text(scale.config_text(method, args))
    cfg = load_config(str(path))
    assert cfg.solver.method == method and cfg.dtype == "float64" and cfg.kernel.get == ("ntk",)
    assert cfg.cluster.n_workers == 2 and cfg.cluster.memory_limit == 4 * 2 ** 30
    assert len(cfg.kernel.layers) == 7
    assert cfg.block_size == (512 if method == "cg" else None)
    assert cfg.solver.products == "cluster"
    if method == "cg":
        assert cfg.solver.preconditioner.kind == "nystrom" and cfg.solver.tol == 1e-6


def test_sampler_sees_a_child_process_memory():
    code = "import time; b = bytearray(200 * 2**20); time.sleep(1.5)"
    p = subprocess.Popen([sys.executable, "-c", code])
    s = scale.TreeSampler(p.pid, interval=0.1).start()
    p.wait()
    s.stop()
    out = s.summary()
    assert out["driver_peak_rss_gib"] > 0.19


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_script_end_to_end(tmp_path):
    env = dict(os.environ, NTKSCALE_BENCH_RESULTS=str(tmp_path / "results"), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "benchmarks/scale.py", "--sizes", "400,600", "--n-test", "100",
                        "--no-warmup", "--dir", str(tmp_path / "work")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=580)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "results" / "scale.json").read_text())
    assert [s["n"] for s in res["sizes"]] == [400, 600]
    assert res["targets"] and all(t["met"] for t in res["targets"])
    assert (tmp_path / "results" / "plots" / "scale.png").exists()
    for s in res["sizes"]:
        assert s["runs"]["cg"]["residual_max_column"] <= 1e-6
        assert s["runs"]["cholesky"]["residual_max_column"] <= 1e-8
        assert s["runs"]["cg"]["test_accuracy"] > 0.7
