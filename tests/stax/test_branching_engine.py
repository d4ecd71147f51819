"""The engine routes branched, LayerNorm and Dropout networks to the compiled CPU paths where
they have kernels and otherwise to the reference path with a reason naming the layer (never
silently); on the GPU, image nets the CPU slab kernel runs take the CUDA slab kernel
(branches, LayerNorm, Dropout included), the others the reference maps with a reason; explain() works, and a residual FC net runs
through the Gram stage (blocks, store) with the in-memory kernel's values."""

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.stax.engine import PATH_LAYERS, select_path


def _res_fc():
    blk = stax.serial(stax.FanOut(2), stax.parallel(stax.serial(stax.Relu(), stax.Dense(16)),
                                                    stax.Identity()), stax.FanInSum())
    return stax.serial(stax.Dense(16, W_std=1.4, b_std=0.1), blk, stax.Relu(), stax.Dense(1))


def _prod_fc():
    return stax.serial(stax.Dense(8), stax.FanOut(2), stax.parallel(stax.Dense(8), stax.Dense(8)),
                       stax.FanInProd(), stax.Dense(1))


#: network, input shape, the layer a reason names, the CPU path
NETS = {
    "residual": (_res_fc(), (5,), "FanOut", "cpu_flat"),
    "layernorm": (stax.serial(stax.Dense(8), stax.LayerNorm(), stax.Relu(), stax.Dense(1)), (5,),
                  "LayerNorm", "cpu_flat"),
    "prod": (_prod_fc(), (5,), "FanInProd", "cpu_flat"),
    "pool_in_branch": (stax.serial(stax.Conv(4, (3, 3)), stax.FanOut(2),
                                   stax.parallel(stax.AvgPool((2, 2)), stax.AvgPool((2, 2))),
                                   stax.FanInSum(), stax.GlobalAvgPool()), (6, 6, 2), "AvgPool",
                       "reference"),
    "dropout_conv": (stax.serial(stax.Conv(4, (3, 3)), stax.Relu(), stax.Dropout(0.5),
                                 stax.GlobalAvgPool(), stax.Dense(1)), (6, 6, 2), "Dropout",
                     "cpu_slab"),
    "concat_conv": (stax.serial(stax.Conv(4, (3, 3)), stax.FanOut(2),
                                stax.parallel(stax.Conv(4, (3, 3), padding="SAME"), stax.Conv(2, (1, 1))),
                                stax.FanInConcat(), stax.GlobalAvgPool()), (6, 6, 2),
                    "FanInConcat", "cpu_slab"),
    "dropout_test_conv": (stax.serial(stax.Conv(4, (3, 3)), stax.Relu(), stax.Dropout(0.5, "test"),
                                      stax.GlobalAvgPool(), stax.Dense(1)), (6, 6, 2), "Dropout",
                          "cpu_slab"),
    "wide_resnet": (stax.presets.wide_resnet(1, 1, 10, pool=2), (8, 8, 3), "FanOut",
                    "cpu_slab_pooled"),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_path_or_reference_with_a_reason(name):
    net, shape, layer, want = NETS[name]
    path = select_path(net, shape, "cpu")
    assert path.name == want, path.reason
    if want == "reference":
        assert layer in path.reason and "branch" in path.reason
    gpu = select_path(net, shape, "gpu")
    if want.startswith("cpu_slab"):
        assert gpu.name == "cuda_slab", gpu.reason
    elif want == "cpu_flat":
        assert gpu.name == "cuda_flat", gpu.reason
    else:
        assert gpu.name == "reference", gpu.reason
        assert layer in gpu.reason or "flat network" in gpu.reason, gpu.reason
    ex = net[2].explain((7,) + shape)
    assert ex.path == want and ex.total_flops > 0
    assert net[2].cost(shape)["flops"] > 0


def test_which_paths_run_the_new_layers():
    new = {"FanOut", "parallel", "FanInSum", "FanInProd", "FanInConcat", "LayerNorm", "Dropout"}
    assert new <= PATH_LAYERS["reference"]
    for name in ("cpu_flat", "cpu_slab", "cpu_slab_pooled"):
        assert new <= PATH_LAYERS[name], name
    assert new <= PATH_LAYERS["cuda_slab"]   # the CUDA slab kernel runs them too (issue 16)


@pytest.mark.parametrize("dropout", [False, True])
def test_gram_stage_residual_fc(tmp_path, dropout):
    """Blocks of 16 over 40 rows (diagonal, off-diagonal and test blocks) equal the in-memory
    kernel; with Dropout(train) only the diagonal of the train Gram carries the 1/rate factor."""
    from distributed import Client, LocalCluster

    from ntkscale.config.run import RunConfig
    from ntkscale.stages.gram import GramPipeline
    from ntkscale.store.gram_store import GramStore
    from tests.support.gram import config_dict, make_data
    from tests.support.reference import assert_matches_in_memory, in_memory_kernels

    net = _res_fc() if not dropout else stax.serial(_res_fc(), stax.Dropout(0.5), stax.Dense(1))
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


def test_yaml_config_expresses_a_residual_block(tmp_path):
    """A YAML config with a residual block (short forms: a bare layer name, no keywords)
    loads to the same canonical spec and hash as the Python-built network."""
    from ntkscale.config import load_config
    from tests.support.gram import make_data

    make_data(tmp_path, n=10, m=0)
    (tmp_path / "run.yaml").write_text("""
data:
  train: {x: x.npy, y: y.npy}
kernel:
  layers:
    - [Dense, {out_dim: 16, W_std: 1.4, b_std: 0.1}]
    - [FanOut, {num: 2}]
    - [parallel, {branches: [[[Relu], [Dense, {out_dim: 16}]], [[Identity]]]}]
    - [FanInSum]
    - [Relu]
    - [Dense, {out_dim: 1}]
store: run.zarr
""")
    cfg = load_config(str(tmp_path / "run.yaml"))
    net = _res_fc()
    assert cfg.kernel.spec_json == net[2].spec_json
    assert cfg.kernel.kernel_fn().spec_hash == net[2].spec_hash
