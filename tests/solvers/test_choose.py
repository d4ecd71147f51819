"""``solver.method: auto``: the rule (choose_method), its use in solve(), the shared-factor ridge path."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from ntkscale.errors import InputError
from ntkscale.solvers.api import solve
from ntkscale.solvers.choose import choose_method, factor_bytes, is_stored, resolve_method
from ntkscale.solvers.operator import GramOperator


def _gram(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8))
    k = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 16.0) + 0.1 * (x @ x.T) / 8
    return k, rng.standard_normal((n, 3))


def test_rule_stored_gram_is_factored_at_every_size():
    for n in (100, 16000, 60000, 200000):
        c = choose_method(n, stored=True)
        assert c.method == "cholesky" and "solvers.json" in c.reason
    assert choose_method(8000, stored=True, n_ridges=8).method == "cholesky"


def test_rule_streamed_gram_and_no_room_for_the_factor_take_cg():
    c = choose_method(16000, stored=False)
    assert c.method == "cg" and "streamed" in c.reason
    need = factor_bytes(60000)
    assert need >= 60000 ** 2 // 2 * 8                   # at least the lower triangle
    c = choose_method(60000, stored=True, free_bytes=need - 1)
    assert c.method == "cg" and "GiB are free" in c.reason
    assert choose_method(60000, stored=True, free_bytes=need).method == "cholesky"


def test_factor_bytes_counts_the_tiles_on_and_below_the_diagonal():
    assert factor_bytes(8192, 8, 4096) == 3 * 4096 ** 2 * 8
    assert factor_bytes(100, 4, 4096) == 100 * 100 * 4          # one tile, clipped to n


def test_resolve_keeps_explicit_methods_and_sees_what_is_stored(tmp_path):
    k, _ = _gram(50)
    op = GramOperator.from_array(k)
    assert resolve_method("cg", op).method == "cg" and resolve_method("cholesky", op).method == "cholesky"
    assert is_stored(op) and is_stored(k)
    assert resolve_method("auto", op).method == "cholesky"
    x = np.random.default_rng(0).standard_normal((20, 3))
    streamed = GramOperator.from_kernel(lambda a, b, get: a @ b.T + 1.0, x)
    assert not is_stored(streamed) and resolve_method("auto", streamed).method == "cg"


def test_solve_auto_reports_its_choice_and_matches_dense():
    k, y = _gram()
    res = solve(k, y, ridges=[1e-3], method="auto")
    assert res.method == "cholesky" and res.summary()["method_reason"] == res.method_reason
    np.testing.assert_allclose(res.alpha[0], np.linalg.solve(k + 1e-3 * np.eye(len(k)), y), rtol=1e-8, atol=1e-10)


def test_several_ridges_share_one_factor(tmp_path):
    k, y = _gram()
    ridges = np.logspace(-6, -1, 8) * np.mean(np.diag(k))
    group = zarr.open_group(str(tmp_path / "f"), mode="w")
    res = solve(GramOperator.from_array(k), y, ridges=ridges, method="cholesky", rtol=1e-8, group=group, tile=128)
    assert len([n for n in group.group_keys()]) == 1           # one factor, of the smallest ridge
    pcg = solve(k, y, ridges=ridges, method="cholesky", rtol=1e-8, tile=128, ridge_path="batched")
    assert pcg.info is not None and pcg.info.iterations > 0 and np.all(pcg.info.converged)
    for r, a, b in zip(ridges, res.alpha, pcg.alpha):
        for x in (a, b):     # shifted CG on the factor (default) and the factor as preconditioner: rtol met
            resid = np.linalg.norm((k + r * np.eye(len(k))) @ x - y, axis=0) / np.linalg.norm(y, axis=0)
            assert np.max(resid) <= 1e-8
    per = solve(k, y, ridges=ridges, method="cholesky", ridge_path="per_ridge", tile=128)
    assert per.info is None and per.tiles_computed == 8 * res.tiles_computed
    np.testing.assert_allclose(res.alpha, per.alpha, rtol=1e-5, atol=1e-8 * np.abs(per.alpha).max())


def test_ridge_path_errors_are_clear():
    k, y = _gram(40)
    with pytest.raises(InputError, match="multishift"):
        solve(k, y, ridges=[1e-3, 1e-2], method="cholesky", ridge_path="multishift")
    with pytest.raises(InputError, match="per_ridge"):
        solve(k, y, ridges=[1e-3, 1e-2], method="cg", ridge_path="per_ridge")


def test_run_with_the_default_method_says_what_auto_picked(tmp_path, capsys):
    """End to end: a config without ``solver.method`` runs ``auto``, prints the choice in one
    line, records it, and solves a ridge list on one factor (validation split included)."""
    from ntkscale.cli.main import main
    from tests.support.gram import write_config
    from tests.support.run import blobs, last_json, run_config

    data = blobs(tmp_path, n=90, m=30, regression=True)
    cfg = write_config(tmp_path, run_config(data, solver={"ridge": [1e-4, 1e-2], "tol": 1e-8}))
    assert main(["run", str(cfg), "--json"]) == 0
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if "method auto" in line]
    assert len(lines) == 1 and "solve: method auto -> cholesky: stored Gram, n = " in lines[0], out.err
    m = last_json(out.out)
    assert m["test_r2"] > 0.5 and len(m["ridges"]) == 2
    store = zarr.open_group(str(tmp_path / "run.zarr"), mode="r")
    rec = dict(store["solver"].attrs)["run"]
    assert rec["method"] == "cholesky" and "solvers.json" in rec["method_reason"]


def test_variance_after_a_ridge_list_with_the_default_method(tmp_path):
    """Only the smallest ridge's factor is stored; the variance of the chosen ridge still
    matches the dense formula (another ridge is factored in memory)."""
    from ntkscale.config.run import load_config
    from ntkscale.stages.run import RunPipeline
    from ntkscale.store.gram_store import GramStore
    from tests.support.gram import write_config
    from tests.support.run import blobs, run_config

    data = blobs(tmp_path, n=60, m=20, regression=True)
    layers = run_config(data)["kernel"]["layers"]
    path = write_config(tmp_path, run_config(data, kernel={"layers": layers, "get": "nngp"},
                                             solver={"ridge": [1e-4, 1e-1, 3.0], "tol": 1e-10}))
    pipe = RunPipeline(load_config(path), progress=False)
    pipe.run()
    store = GramStore.open(tmp_path / "run.zarr")
    rec = dict(store.group("solver").attrs)["run"]
    assert rec["method"] == "cholesky"
    K, Kx = np.asarray(store.train_array("nngp")[...]), np.asarray(store.test_array("nngp")[...])
    ridge = rec["ridges_absolute"][rec["chosen_index"]]
    want = store.diag("test", "nngp") - np.einsum("ij,ji->i", Kx, np.linalg.solve(K + ridge * np.eye(len(K)), Kx.T))
    np.testing.assert_allclose(pipe.variance(block=7), want, rtol=1e-6, atol=1e-9)
