"""engine.select_path (the one path choice), the path tables and kernel_fn.explain."""

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import InputError
from ntkscale.stax.engine import PATH_LAYERS, PATHS, Explanation, Path, select_path
from ntkscale.stax.engine import cpu_flat, cuda_slab, reference, slab_program
from ntkscale.stax.spec import layer_names

FC = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
CNTK = stax.presets.cntk(2)
MYRTLE = stax.presets.myrtle(5, final_pools=1)
GELU_IMAGE = stax.serial(stax.Conv(2, (3, 3), padding="SAME"), stax.Gelu(), stax.GlobalAvgPool(),
                         stax.Dense(1))


@pytest.mark.parametrize("net,shape,device,name,words", [
    (FC, (5,), "cpu", "cpu_flat", "Dense, Relu: all supported by the compiled flat kernel"),
    (FC, (5,), "gpu", "cuda_flat", "CUDA flat kernel"),
    (CNTK, (8, 8, 3), "cpu", "cpu_slab", "Conv, Relu, GlobalAvgPool, Dense: all supported"),
    (MYRTLE, (8, 8, 3), "cpu", "cpu_slab_pooled", "AvgPool stages"),
    (CNTK, (8, 8, 3), "gpu", "cuda_slab", "CUDA slab kernel"),
])
def test_select_path_names_the_path_and_why(net, shape, device, name, words):
    path = select_path(net, shape, device)
    assert isinstance(path, Path) and path.name == name and words in path.reason
    assert select_path(net[2], (shape, shape), device) == path          # kernel_fn, shape pair
    assert select_path(net[2].spec, shape, device) == path              # spec list


def test_fallback_reason_names_the_missing_layer_or_option():
    why = select_path(GELU_IMAGE, (8, 8, 3)).reason
    assert select_path(GELU_IMAGE, (8, 8, 3)).name == "reference" and "layer 1 (Gelu)" in why
    assert select_path(MYRTLE, (8, 8, 3), "gpu").name == "cuda_slab"          # AvgPool stages on the GPU too
    gpu = select_path(GELU_IMAGE, (8, 8, 3), "gpu")
    assert gpu.name == "reference" and "not cuda_slab: layer 1 (Gelu)" in gpu.reason
    assert "fast=False" in select_path(CNTK, (8, 8, 3), fast=False).reason
    assert "float16" in select_path(FC, (5,), dtype="float16").reason
    assert "array_api_strict" in select_path(FC, (5,), namespace="array_api_strict").reason
    assert "O(n)" in select_path(FC, (5,), diagonal=True).reason
    with pytest.raises(InputError, match="device"):
        select_path(FC, (5,), "tpu")


def test_path_tables_match_the_registry():
    names = set(layer_names())
    assert set(PATHS) == {"reference", "cpu_flat", "cpu_slab", "cpu_slab_pooled", "cuda_slab", "cuda_flat"}
    for path, table in PATH_LAYERS.items():
        assert table <= names, (path, table - names)
    for module in (reference, cpu_flat, slab_program, cuda_slab):
        assert module.SUPPORTED_LAYERS <= names
    assert reference.SUPPORTED_LAYERS == names      # the reference path runs every layer


def test_kernel_fn_runs_the_selected_path(monkeypatch):
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 2))

    def refuse(*args, **kwargs):
        raise AssertionError("slab path used")

    monkeypatch.setattr(slab_program, "flops_per_pair", refuse)
    GELU_IMAGE[2](x)                                  # reference path: no slab code
    monkeypatch.setattr("ntkscale.stax.engine.cpu_slab.evaluate", refuse)
    with pytest.raises(AssertionError, match="slab path used"):
        CNTK[2](x)


def test_explain_fields():
    e = CNTK[2].explain((10, 8, 8, 3))
    assert isinstance(e, Explanation) and e.path == "cpu_slab" and e.tile is None
    assert e.lanes >= slab_program.LANES_MIN and e.entries == 55
    assert e.flops_per_entry == CNTK[2].cost((8, 8, 3))["flops"]
    assert e.total_flops == e.flops_per_entry * 55 and e.bytes_per_entry == CNTK[2].cost((8, 8, 3))["bytes_engine"] * 8 == 2 * 8
    assert e.lines()[0].startswith("path: cpu_slab (") and e.as_dict()["path"] == "cpu_slab"
    r = GELU_IMAGE[2].explain((10, 8, 8, 3), (7, 8, 8, 3), dtype="float32", memory_budget=1 << 20)
    assert r.path == "reference" and r.lanes is None and r.entries == 70
    assert r.tile is not None and 1 <= r.tile[0] <= 10 and 1 <= r.tile[1] <= 7
    assert r.as_dict()["tile"] == list(r.tile) and "Gelu" in r.reason
    f = FC[2].explain((100, 5), device="gpu")
    assert f.path == "cuda_flat" and f.tile is None and f.entries == 5050
    with pytest.raises(InputError):
        FC[2].explain((10, 5), (10, 6))
