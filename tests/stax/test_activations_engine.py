"""The new activations and SumPool/GlobalSumPool everywhere, not just in memory: canonical
specs (JSON, hash, round trip, YAML configs), the engine's path choice with a reason that
names the layer, ``kernel_fn.cost()``/``explain``, and the Gram stage (blocks, store)."""

import json

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import ConfigError
from ntkscale.stax.engine import PATH_LAYERS, select_path


NEW_ACTIVATIONS = {
    "Sigmoid_like": stax.Sigmoid_like(), "Rbf": stax.Rbf(), "Gaussian": stax.Gaussian(),
    "Exp": stax.Exp(), "ExpNormalized": stax.ExpNormalized(), "Cos": stax.Cos(), "Sign": stax.Sign(),
    "Monomial": stax.Monomial(2), "RectifiedMonomial": stax.RectifiedMonomial(2),
    "Polynomial": stax.Polynomial([0.0, 1.0, 0.5]), "Hermite": stax.Hermite(2), "Gabor": stax.Gabor(),
    "ElementwiseNumerical": stax.ElementwiseNumerical("swish", 9),
}
NEW = set(NEW_ACTIVATIONS) | {"SumPool", "GlobalSumPool"}


def test_exported_and_registered():
    for name in NEW:
        assert name in stax.__all__ and callable(getattr(stax, name)) and name in stax.layer_names()


def test_canonical_specs_have_every_default():
    assert stax.ElementwiseNumerical("tanh", 25).spec == [
        ["ElementwiseNumerical", {"deg": 25, "df": None, "fn": "tanh"}]]
    assert stax.ExpNormalized().spec == [["ExpNormalized", {"do_clip": False, "gamma": 1.0, "shift": -1.0}]]
    assert stax.Gaussian().spec == [["Gaussian", {"a": 1.0, "b": -1.0}]]
    assert stax.Polynomial(np.array([1, 2])).spec == [["Polynomial", {"coef": [1.0, 2.0]}]]
    assert stax.SumPool((2, 2)).spec == [["SumPool", {"batch_axis": 0, "channel_axis": -1, "padding": "VALID",
                                                      "strides": None, "window_shape": [2, 2]}]]
    assert stax.Sigmoid_like().spec == [["Sigmoid_like", {}]]


@pytest.mark.parametrize("name", sorted(NEW_ACTIVATIONS))
def test_spec_round_trips(name):
    net = stax.serial(stax.Dense(4), NEW_ACTIVATIONS[name], stax.Dense(1))
    again = stax.from_spec(json.loads(net[2].spec_json))
    assert again[2].spec_json == net[2].spec_json and again[2].spec_hash == net[2].spec_hash
    x = np.random.default_rng(0).standard_normal((3, 5))
    x /= np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
    np.testing.assert_array_equal(again[2](x, None, "ntk"), net[2](x, None, "ntk"))


def test_existing_specs_keep_their_hash():
    """Layers that existed before keep their exact canonical JSON (stores stay valid)."""
    net = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1), stax.Erf(), stax.Sin(), stax.Dense(1))
    assert net[2].spec_json == (
        '[["Dense",{"W_std":1.5,"b_std":0.1,"batch_axis":0,"channel_axis":-1,"out_dim":8,'
        '"parameterization":"ntk","s":[1,1]}],["Erf",{"a":1.0,"b":1.0,"c":0.0}],'
        '["Sin",{"a":1.0,"b":1.0,"c":0.0}],["Dense",{"W_std":1.0,"b_std":null,"batch_axis":0,'
        '"channel_axis":-1,"out_dim":1,"parameterization":"ntk","s":[1,1]}]]')
    pool = stax.serial(stax.Conv(2, (3, 3)), stax.AvgPool((2, 2)), stax.GlobalAvgPool(), stax.Dense(1))
    assert [layer[0] for layer in pool.spec] == ["Conv", "AvgPool", "GlobalAvgPool", "Dense"]
    assert pool.spec[1][1] == {"batch_axis": 0, "channel_axis": -1, "normalize_edges": False,
                               "padding": "VALID", "strides": None, "window_shape": [2, 2]}


@pytest.mark.parametrize("name", sorted(NEW_ACTIVATIONS))
def test_reference_path_with_a_reason_and_a_cost(name):
    net = stax.serial(stax.Dense(4), NEW_ACTIVATIONS[name], stax.Dense(1))
    path = select_path(net, (5,), "cpu")
    assert path.name == "reference" and f"({name})" in path.reason and "cpu_flat" in path.reason
    ex = net[2].explain((7, 5))
    assert ex.path == "reference" and name in ex.reason and ex.total_flops > 0
    assert net[2].cost((5,))["flops"] > 0
    img = stax.serial(stax.Conv(2, (3, 3)), NEW_ACTIVATIONS[name], stax.GlobalAvgPool(), stax.Dense(1))
    path = select_path(img, (6, 6, 2), "cpu")
    assert path.name == "reference" and name in path.reason and "slab" in path.reason


def test_sum_pooling_paths_and_cost():
    net = stax.serial(stax.Conv(2, (3, 3)), stax.Relu(), stax.SumPool((2, 2), (2, 2)), stax.Conv(2, (2, 2)),
                      stax.Relu(), stax.GlobalSumPool(), stax.Dense(1))
    path = select_path(net, (8, 8, 3), "cpu")
    assert path.name == "reference" and "SumPool" in path.reason
    assert select_path(net, (8, 8, 3), "gpu").name == "cuda_slab"     # the CUDA slab sums windows
    cost = net[2].cost((8, 8, 3))
    avg = stax.serial(stax.Conv(2, (3, 3)), stax.Relu(), stax.AvgPool((2, 2), (2, 2)), stax.Conv(2, (2, 2)),
                      stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))[2].cost((8, 8, 3))
    assert cost["flops"] == pytest.approx(avg["flops_reference"]) and cost["pair_entries"] == avg["pair_entries"]
    for layer in NEW:
        assert layer in PATH_LAYERS["reference"]
        on_gpu = {"cuda_slab"} if layer in ("SumPool", "GlobalSumPool") else set()
        assert all(layer not in layers for p, layers in PATH_LAYERS.items() if p != "reference" and p not in on_gpu)


def test_numerical_cost_grows_with_the_degree():
    cost = [stax.serial(stax.Dense(4), stax.ElementwiseNumerical("tanh", d))[2].cost((5,))["flops"]
            for d in (5, 10, 20)]
    assert cost[0] < cost[1] < cost[2] and cost[2] > 4 * cost[0] * 0.9


def test_yaml_config_names_the_function(tmp_path):
    from ntkscale.config import load_config
    from tests.support.gram import make_data

    make_data(tmp_path, n=10, m=0)
    text = """
data:
  train: {x: x.npy, y: y.npy}
kernel:
  layers:
    - [Dense, {out_dim: 16, W_std: 1.4, b_std: 0.1}]
    - [ElementwiseNumerical, {fn: FN, deg: 25}]
    - [Polynomial, {coef: [0.0, 1.0, 0.5]}]
    - [Dense, {out_dim: 1}]
store: run.zarr
"""
    (tmp_path / "run.yaml").write_text(text.replace("FN", "softplus"))
    cfg = load_config(str(tmp_path / "run.yaml"))
    net = stax.serial(stax.Dense(16, W_std=1.4, b_std=0.1), stax.ElementwiseNumerical("softplus", 25),
                      stax.Polynomial([0.0, 1.0, 0.5]), stax.Dense(1))
    assert cfg.kernel.spec_json == net[2].spec_json
    (tmp_path / "bad.yaml").write_text(text.replace("FN", "softpluss"))
    with pytest.raises(ConfigError, match=r"kernel.layers: ElementwiseNumerical\(fn='softpluss'\).*'softplus'"):
        load_config(str(tmp_path / "bad.yaml"))


def test_gram_stage_new_activations(tmp_path):
    """Blocks of 16 over 40 rows (diagonal, off-diagonal and test blocks) equal the in-memory kernel."""
    from distributed import Client, LocalCluster

    from ntkscale.config.run import RunConfig
    from ntkscale.stages.gram import GramPipeline
    from ntkscale.store.gram_store import GramStore
    from tests.support.gram import config_dict, make_data
    from tests.support.reference import assert_matches_in_memory, in_memory_kernels

    net = stax.serial(stax.Dense(16, W_std=1.2, b_std=0.1), stax.ElementwiseNumerical("gelu", 15),
                      stax.Dense(16), stax.Gabor(), stax.Dense(16), stax.RectifiedMonomial(2),
                      stax.Dense(16, W_std=0.6), stax.Polynomial([0.1, 1.0, 0.3]), stax.Dense(1))
    spec = net[2].spec
    data = make_data(tmp_path, n=40, m=9)
    cfg = RunConfig.from_mapping(config_dict(data, kernel={"layers": spec, "get": ["nngp", "ntk"]}),
                                 tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        GramPipeline(cfg, progress=False).run(client=client)
    store = GramStore.open(cfg.store)
    ref = in_memory_kernels(data, "train", layers=spec)
    reft = in_memory_kernels(data, "test", layers=spec)
    for kind in ("nngp", "ntk"):
        assert_matches_in_memory(store.train_array(kind)[...], ref[kind])
        assert_matches_in_memory(store.diag("train", kind), ref[f"diag_{kind}"])
        assert_matches_in_memory(store.array("test", kind)[...], reft[kind])


def test_numerical_gram_is_symmetric_for_any_row_blocks():
    """x2=None: the lower triangle mirrors the upper one whatever the reference path's row
    blocks, and the upper triangle is the cross kernel's value for those pairs."""
    x = np.random.default_rng(2).standard_normal((9, 4))
    kfn = stax.serial(stax.Dense(8, W_std=1.5), stax.ElementwiseNumerical("tanh", 12), stax.Dense(1))[2]
    whole = kfn(x, None, "ntk")
    np.testing.assert_array_equal(whole, whole.T)
    np.testing.assert_allclose(kfn(x, None, "ntk", memory_budget=1 << 9), whole, rtol=1e-14)
    upper = kfn(x[:4], x[4:], "ntk")
    np.testing.assert_allclose(whole[:4, 4:], upper, rtol=1e-13)
    assert np.abs(kfn(x[4:], x[:4], "ntk") - upper.T).max() > 1e-9 * np.abs(upper).max()


def test_docs_list_every_layer_and_registry_function():
    from ntkscale.stax.layers.numerical import FUNCTION_NAMES, FUNCTIONS
    from tests.support.paths import ROOT

    text = (ROOT / "docs" / "layers.md").read_text()
    for name in NEW:
        assert f"`{name}(" in text, name
    for name in FUNCTION_NAMES:
        assert f"| `{name}` | " in text, name
        assert FUNCTIONS[name][2].split(" (")[0] in text.replace("`", "").replace("\\|", "|"), name


@pytest.mark.parametrize("name", sorted(NEW_ACTIVATIONS))
def test_float32_inputs_stay_float32(name):
    x = np.random.default_rng(6).standard_normal((5, 4))
    x /= np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
    kfn = stax.serial(stax.Dense(8, W_std=1.0, b_std=None), NEW_ACTIVATIONS[name], stax.Dense(1))[2]
    want = kfn(x, x[:3], "ntk")
    got = kfn(x.astype(np.float32), x[:3].astype(np.float32), "ntk")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5 * np.abs(want).max())


def test_numerical_in_the_flat_tail_of_a_slab_network_is_symmetric():
    x = np.random.default_rng(0).standard_normal((5, 6, 6, 2))
    net = stax.serial(stax.Conv(4, (3, 3), padding="SAME"), stax.Relu(), stax.GlobalAvgPool(),
                      stax.Dense(8, W_std=1.2, b_std=0.1), stax.ElementwiseNumerical("tanh", 15),
                      stax.Dense(1))
    assert net[2].explain((5, 6, 6, 2)).path == "cpu_slab"
    fast, ref = net[2](x, None, "ntk"), net[2](x, None, "ntk", fast=False)
    np.testing.assert_array_equal(ref, ref.T)
    np.testing.assert_allclose(fast, ref, rtol=1e-12)
