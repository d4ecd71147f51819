"""Graph patterns in the Gram engine's own pieces: ``data.load_inputs`` reads
``data.<set>.pattern`` next to ``x`` (checked, fingerprinted into ``x``'s fingerprint), and
``gram.compute`` evaluates blocks with the patterns sliced like the inputs: blocks
assembled into a Gram equal the in-memory kernel."""

import types

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.data import combined_fingerprint, load_inputs, scan
from ntkscale.errors import InputError
from ntkscale.gram.compute import compute_block, compute_diag

NET = stax.serial(stax.Dense(8, W_std=1.3, b_std=0.1), stax.Relu(), stax.Aggregate(),
                  stax.Dense(8, W_std=1.2, b_std=0.1), stax.Relu(), stax.Aggregate(),
                  stax.GlobalAvgPool(), stax.Dense(1))


def _data(tmp_path, rng, n=11, m=5, w=6):
    arrays = {"x": rng.standard_normal((n, w, 3)), "y": rng.standard_normal((n, 1)),
              "p": (rng.random((n, w, w)) < 0.4).astype(np.float32),
              "xt": rng.standard_normal((m, w, 3)), "yt": rng.standard_normal((m, 1)),
              "pt": (rng.random((m, w, w)) < 0.4).astype(np.float32)}
    paths = {}
    for name, a in arrays.items():
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], a)
    return arrays, paths


def _config(paths, test=True, **over):
    train = types.SimpleNamespace(x=paths["x"], y=paths["y"], pattern=paths.get("p"))
    tst = types.SimpleNamespace(x=paths["xt"], y=paths["yt"], pattern=paths.get("pt"))
    for key, value in over.items():
        setattr(train if key.startswith("train_") else tst, key.split("_", 1)[1], value)
    return types.SimpleNamespace(train=train, test=tst if test else None)


def test_patterns_enter_the_fingerprint(tmp_path, rng):
    arrays, paths = _data(tmp_path, rng)
    sets = load_inputs(_config(paths), NET[2])
    train = sets["train"]
    assert train.pattern.shape == (11, 6, 6) and train.pattern_path == paths["p"]
    fx, fp = scan(arrays["x"], "x"), scan(arrays["p"], "p")
    assert train.x_fingerprint == combined_fingerprint(fx, fp) != fx
    assert train.fingerprints()["pattern"] == fp and train.sources()["pattern"] == paths["p"]
    changed = arrays["p"].copy()
    changed[3, 0, 1] = 1 - changed[3, 0, 1]
    np.save(tmp_path / "p2.npy", changed)
    other = load_inputs(_config(dict(paths, p=str(tmp_path / "p2.npy"))), NET[2])["train"]
    assert other.x_fingerprint != train.x_fingerprint      # a changed graph is changed data
    plain = load_inputs(_config({k: v for k, v in paths.items() if k not in ("p", "pt")}),
                        stax.serial(stax.Dense(4), stax.GlobalAvgPool())[2])["train"]
    assert plain.x_fingerprint == fx and "pattern" not in plain.fingerprints()


def test_bad_patterns_are_refused_before_any_work(tmp_path, rng):
    arrays, paths = _data(tmp_path, rng)
    np.save(tmp_path / "short.npy", arrays["p"][:7])
    with pytest.raises(InputError, match=r"data.train.pattern .*shape \(7, 6, 6\).*11 samples"):
        load_inputs(_config(paths, train_pattern=str(tmp_path / "short.npy")), NET[2])
    np.save(tmp_path / "wide.npy", np.ones((11, 5, 5)))
    with pytest.raises(InputError, match=r"data.train.x .* with data.train.pattern .*does not fit the "
                                         r"kernel: Aggregate.*shape \(2, 5, 5\), expected \(2, 6, 6\)"):
        load_inputs(_config(paths, train_pattern=str(tmp_path / "wide.npy")), NET[2])
    with pytest.raises(InputError, match=r"data.train.pattern is given but data.test.pattern is not"):
        load_inputs(_config(paths, test_pattern=None), NET[2])
    with pytest.raises(InputError, match=r"Aggregate layers but data.train has no pattern"):
        load_inputs(_config(paths, train_pattern=None, test_pattern=None), NET[2])


def test_blocks_with_sliced_patterns_equal_the_in_memory_gram(rng, tmp_path):
    arrays, _ = _data(tmp_path, rng)
    x, p, xt, pt = arrays["x"], arrays["p"], arrays["xt"], arrays["pt"]
    kfn = NET[2]
    want = kfn(x, None, ("nngp", "ntk"), pattern=(p, None))
    want_test = kfn(xt, x, "ntk", pattern=(pt, p))
    b = 4
    got = {k: np.zeros((11, 11)) for k in ("nngp", "ntk")}
    for r0 in range(0, 11, b):
        for c0 in range(r0, 11, b):
            rows, cols = slice(r0, r0 + b), slice(c0, c0 + b)
            if r0 == c0:
                out = compute_block(kfn, x[rows], None, get=("nngp", "ntk"), dtype="float64", xp=np,
                                    patterns=(p[rows], None))
            else:
                out = compute_block(kfn, x[rows], x[cols], get=("nngp", "ntk"), dtype="float64", xp=np,
                                    patterns=(p[rows], p[cols]))
            for k, v in out.items():
                got[k][rows, cols] = v
                got[k][cols, rows] = v.T
    for k, ref in zip(("nngp", "ntk"), want):
        np.testing.assert_allclose(got[k], ref, rtol=1e-11)
    test_block = compute_block(kfn, xt, x[:4], get=("ntk",), dtype="float64", xp=np,
                               patterns=(pt, p[:4]))["ntk"]
    np.testing.assert_allclose(test_block, want_test[:, :4], rtol=1e-11)
    diag = compute_diag(kfn, x[4:9], get=("ntk",), dtype="float64", xp=np, pattern=p[4:9])["ntk"]
    np.testing.assert_allclose(diag, np.diag(want[1])[4:9], rtol=1e-11)
    f32 = compute_block(kfn, x[:4], None, get=("nngp",), dtype="float32", xp=np, patterns=(p[:4], None))
    assert f32["nngp"].dtype == np.float32
    np.testing.assert_allclose(f32["nngp"], want[0][:4, :4], rtol=2e-5)
