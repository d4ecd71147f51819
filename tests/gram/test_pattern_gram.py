"""The Gram engine end to end (GramPipeline on a 2-process LocalCluster) for a sequence
network: NWC inputs (n, length, channels), a pre-LayerNorm transformer with attention;
blocked == in memory, and resume computes nothing twice."""

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.cluster.client import WORKER_ENV
from ntkscale.config.run import RunConfig
from ntkscale.stages.gram import GramPipeline
from ntkscale.store.gram_store import GramStore
from tests.support.gram import config_dict


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="1GiB", env=dict(WORKER_ENV)) as cluster, Client(cluster) as c:
        yield c


def test_sequence_transformer_gram(tmp_path, client, rng):
    net = stax.presets.transformer(1, width=16, n_heads=2, attention_mechanism="RELU")
    x, xt = rng.standard_normal((21, 5, 3)), rng.standard_normal((7, 5, 3))
    data = {}
    for name, a in (("x", x), ("y", rng.standard_normal((21, 1))), ("xt", xt),
                    ("yt", rng.standard_normal((7, 1)))):
        data[name] = tmp_path / f"{name}.npy"
        np.save(data[name], a)
    cfg = RunConfig.from_mapping(config_dict(data, block_size=8, kernel={"layers": net[2].spec,
                                                                          "get": ["nngp", "ntk"]}),
                                 tmp_path)
    report = GramPipeline(cfg, progress=False).run(client=client)
    assert report.blocks_computed > 0
    store = GramStore.open(tmp_path / "run.zarr")
    want = net[2](x, None, ("nngp", "ntk"))
    want_t = net[2](xt, x, ("nngp", "ntk"))
    for kind, ref, ref_t in zip(("nngp", "ntk"), want, want_t):
        np.testing.assert_allclose(store.train_array(kind)[...], ref, rtol=1e-11)
        np.testing.assert_allclose(store.test_array(kind)[...], ref_t, rtol=1e-11)
        np.testing.assert_allclose(store.diag("train", kind), np.diag(ref), rtol=1e-11)
    again = GramPipeline(cfg, progress=False).run(client=client)
    assert again.blocks_computed == 0


def test_graph_network_gram_with_pattern_files(tmp_path, client, rng):
    """``data.train.pattern``/``data.test.pattern`` files: blocks slice them with the inputs,
    the result equals the in-memory kernel; a changed pattern is refused, store untouched."""
    from ntkscale.errors import SpecMismatchError

    net = stax.serial(stax.Dense(8, W_std=1.3, b_std=0.1), stax.Relu(), stax.Aggregate(),
                      stax.Dense(8, W_std=1.2, b_std=0.1), stax.Relu(), stax.Aggregate(),
                      stax.GlobalAvgPool(), stax.Dense(1))
    x, xt = rng.standard_normal((19, 6, 3)), rng.standard_normal((6, 6, 3))
    p, pt = (rng.random((19, 6, 6)) < 0.4).astype(float), (rng.random((6, 6, 6)) < 0.4).astype(float)
    data = {}
    for name, a in (("x", x), ("y", rng.standard_normal((19, 1))), ("xt", xt),
                    ("yt", rng.standard_normal((6, 1))), ("p", p), ("pt", pt)):
        data[name] = tmp_path / f"{name}.npy"
        np.save(data[name], a)
    mapping = config_dict(data, block_size=8, kernel={"layers": net[2].spec, "get": ["nngp", "ntk"]})
    mapping["data"]["train"]["pattern"] = "p.npy"
    mapping["data"]["test"]["pattern"] = "pt.npy"
    cfg = RunConfig.from_mapping(mapping, tmp_path)
    GramPipeline(cfg, progress=False).run(client=client)
    store = GramStore.open(tmp_path / "run.zarr")
    want = net[2](x, None, ("nngp", "ntk"), pattern=(p, None))
    want_t = net[2](xt, x, ("nngp", "ntk"), pattern=(pt, p))
    for kind, ref, ref_t in zip(("nngp", "ntk"), want, want_t):
        np.testing.assert_allclose(store.train_array(kind)[...], ref, rtol=1e-11)
        np.testing.assert_allclose(store.test_array(kind)[...], ref_t, rtol=1e-11)
        np.testing.assert_allclose(store.diag("train", kind), np.diag(ref), rtol=1e-11)
        np.testing.assert_allclose(store.diag("test", kind), np.diag(net[2](xt, None, kind, pattern=(pt, None))),
                                   rtol=1e-11)
    p2 = p.copy()
    p2[0, 0, 0] = 1 - p2[0, 0, 0]
    np.save(tmp_path / "p.npy", p2)
    with pytest.raises(SpecMismatchError, match=r"different train inputs \(data.train.pattern\)"):
        GramPipeline(RunConfig.from_mapping(mapping, tmp_path), progress=False).run(client=client)


def test_graph_stores_solve_from_the_stored_gram_and_refuse_recomputing_without_patterns(tmp_path, client, rng):
    """Paths that recompute kernel entries from bare inputs (streamed products, predictions
    for new inputs) would silently drop the patterns: refused in one line; stored solves work."""
    from ntkscale.errors import InputError
    from ntkscale.stages.run import RunPipeline

    net = stax.serial(stax.Dense(8, W_std=1.3, b_std=0.1), stax.Relu(), stax.Aggregate(),
                      stax.GlobalAvgPool(), stax.Dense(1))
    x, p = rng.standard_normal((12, 5, 3)), (rng.random((12, 5, 5)) < 0.5).astype(float)
    data = {}
    for name, a in (("x", x), ("y", rng.standard_normal((12, 1))), ("p", p)):
        data[name] = tmp_path / f"{name}.npy"
        np.save(data[name], a)
    mapping = config_dict(data, block_size=8, kernel={"layers": net[2].spec, "get": ["ntk"]},
                          solver={"method": "cholesky"})
    mapping["data"]["train"]["pattern"] = "p.npy"
    pipe = RunPipeline(RunConfig.from_mapping(mapping, tmp_path), progress=False)
    pipe.gram()
    assert GramStore.open(tmp_path / "run.zarr").has_patterns
    pipe.solve()
    with pytest.raises(InputError, match=r"predict --x recomputes kernel entries .* graph network"):
        pipe.predict_new(x[:2])
    mapping["solver"] = {"method": "cg", "mode": "streamed"}
    streamed = RunPipeline(RunConfig.from_mapping(mapping, tmp_path), progress=False)
    with pytest.raises(InputError, match=r"solver.mode: streamed recomputes kernel entries"):
        streamed.solve()
