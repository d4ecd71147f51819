"""Cost model fit and the shapes-only projection (ntkscale.costs.model, ntkscale.costs.projection)."""

import json

import numpy as np
import pytest

from ntkscale import NtkscaleError, default_layers, stax
from ntkscale.costs import model as costmodel
from ntkscale.cli.main import main as cli_main
from ntkscale.costs.projection import CalibrationError, cifar10_table, project, resolve_net

TRUE = {"flat": {"s_per_input_flop": 2e-11, "s_per_layer_flop": 1.5e-10, "s_per_byte": 1e-10,
                 "overhead_s_per_call": 4e-4},
        "slab": {"s_per_flop": 1e-10, "s_per_lane_flop": 2e-10, "overhead_s_per_call": 2e-3},
        "pooled": {"s_per_flop": 3e-10, "s_per_lane_flop": 4e-10, "overhead_s_per_call": 5e-3}}


def _synthetic(dtype="float64"):
    """Measurements generated from TRUE (plus 1 % deterministic noise)."""
    meas, rng = [], np.random.default_rng(0)
    nets = [(default_layers(depth)[2], (d,)) for depth in (1, 3, 8) for d in (16, 784, 3072)]
    nets += [(stax.presets.cntk(depth)[2], (hw, hw, 3)) for depth in (1, 3) for hw in (4, 8, 16)]
    nets += [(stax.presets.myrtle(depth, final_pools=1)[2], (hw, hw, 3)) for depth in (5, 7) for hw in (8, 16)]
    for kfn, shape in nets:
        for n in (4, 16, 256):
            feat = costmodel.features(kfn, shape, dtype)
            coef = TRUE[feat["path"]]
            row = costmodel._row(feat, n, n)   # pooled: self pairs; small calls: fewer lanes
            t = float(row @ [coef.get(f"s_per_{k[:-1]}", 0.0) if k != "overhead" else coef["overhead_s_per_call"]
                             for k in costmodel.TERMS[feat["path"]]]) * n * n
            t *= 1 + 0.01 * rng.standard_normal()
            meas.append({"spec": kfn.spec, "input_shape": list(shape), "dtype": dtype, "n1": n, "n2": n, "cpu_s": t})
    return meas


def test_fit_recovers_the_coefficients():
    cal = costmodel.fit(_synthetic(), machine={"cpu": "test"})
    assert cal["fit"]["median_abs_rel_err"] < 0.02 and cal["fit"]["r2_log"] > 0.999
    assert cal["label"].startswith("CPU calibration")
    kfn = default_layers(5)[2]
    want = 1000 * 1000 * costmodel._apply(TRUE["flat"], "flat", costmodel.features(kfn, (500,)))[0] + 4e-4
    assert costmodel.predict_call(cal, kfn, (500,), 1000, 1000) == pytest.approx(want, rel=0.05)
    assert {"flat", "slab", "pooled"} <= set(cal["coefficients"]["float64"])
    for path, coefs in cal["coefficients"]["float64"].items():
        assert coefs["coefficients"]["s_per_flop" if path != "flat" else "s_per_layer_flop"] == pytest.approx(
            TRUE[path]["s_per_flop" if path != "flat" else "s_per_layer_flop"], rel=0.05), path
    # A pooled call of n1 × n2 entries runs n1 + n2 self pairs on top.
    myrtle, shape = stax.presets.myrtle(5, final_pools=1)[2], (8, 8, 3)
    feat = costmodel.features(myrtle, shape)
    lanes = costmodel.effective_lanes(feat["lanes"], 16)          # 16 pairs: narrowed lane groups
    assert lanes < feat["lanes"]
    per = TRUE["pooled"]["s_per_flop"] * feat["flops"] + TRUE["pooled"]["s_per_lane_flop"] * feat["flops"] / lanes
    assert costmodel.predict_call(cal, myrtle, shape, 8, 2) == pytest.approx((16 + 10) * per + 5e-3, rel=0.05)


def test_code_paths():
    assert costmodel.code_path(default_layers(3), (10,)) == "flat"
    assert costmodel.code_path(stax.presets.cntk(3), (8, 8, 1)) == "slab"
    assert costmodel.code_path(stax.presets.myrtle(5), (32, 32, 3)) == "pooled"   # AvgPool stages
    assert costmodel.code_path(stax.presets.myrtle(5), (32, 32, 3), "gpu") == "pooled"  # CUDA pooling stages
    assert costmodel.code_path(stax.presets.cntk(3), (8, 8, 1), "gpu") == "slab"
    circular_pool = stax.serial(stax.Conv(1, (3, 3), padding="CIRCULAR"), stax.Relu(),
                                stax.AvgPool((2, 2), (2, 2), "CIRCULAR"), stax.Flatten(),
                                stax.Dense(1))
    assert costmodel.code_path(circular_pool, (8, 8, 3)) == "reference"


@pytest.fixture
def calibration(tmp_path):
    cal = costmodel.fit(_synthetic(), machine={"cpu": "test"})
    path = tmp_path / "costmodel_cpu.json"
    costmodel.save(cal, path)
    return path


def test_grid_entries_are_the_upper_triangle(calibration):
    # the train Gram's upper triangle (diagonal blocks as triangles), the test rows, the diagonals
    p = project(1000, (784,), "fc3", calibration=calibration, block_size=300)
    assert p["entries"] == 1000 * 1001 / 2 + 1000 and p["kernel_calls"] == 4 * 5 / 2 + 4
    q = project(1000, (784,), "fc3", calibration=calibration, block_size=300, n_test=70)
    assert q["entries"] == 1000 * 1001 / 2 + 70 * 1000 + 1070


def test_project_scales_and_splits_over_devices(calibration):
    a = project(10000, (784,), "fc3", "cpu", 1, "float64", calibration, block_size=1000)
    b = project(20000, (784,), "fc3", "cpu", 8, "float64", calibration, block_size=1000)
    assert a["code_path"] == "flat" and a["unit"] == "core"
    assert b["device_hours"] / a["device_hours"] == pytest.approx(4, rel=0.02)
    # 230 tasks on 8 cores: the even split, plus at most the longest task (list scheduling)
    assert b["device_seconds"] / 8 <= b["compute_wall_seconds"] <= b["device_seconds"] / 8 * (1 + 8 / 210)
    assert b["write_seconds"] is None and b["binds"] == "compute"   # no write bandwidth calibrated
    assert b["wall_seconds"] == b["compute_wall_seconds"]
    assert any("CPU calibration" in n for n in a["notes"])
    json.dumps(a)  # JSON-able


def test_project_names_and_errors(calibration, monkeypatch, tmp_path):
    assert resolve_net("myrtle10", (32, 32, 3)).spec == stax.presets.myrtle(10)[2].spec
    assert resolve_net("cntk-gap21", (32, 32, 3)).spec == stax.presets.cntk(21, "gap")[2].spec
    with pytest.raises(NtkscaleError, match="unknown net"):
        project(10, (8, 8, 3), "resnet50", "cpu", 1, "float32", calibration)
    monkeypatch.setenv("NTKSCALE_CALIBRATION_DIR", str(tmp_path / "none"))
    with pytest.raises(CalibrationError, match="no GPU calibration"):
        project(50000, (32, 32, 3), "myrtle5", "gpu", 8, "float64")
    with pytest.raises(CalibrationError, match="measured on a CPU"):
        project(50000, (32, 32, 3), "cntk-gap21", "gpu", 8, "float32", calibration)


def test_cifar_table_and_cli(calibration, capsys):
    # On the CPU Myrtle and CNTK-GAP run on the slab path; the synthetic calibration
    # has no array-API coefficients (a CIRCULAR-pooling net needs them): said plainly.
    assert {row["code_path"] for row in cifar10_table(calibration)} == {"slab", "pooled"}
    circular_pool = stax.serial(stax.Conv(1, (3, 3), padding="CIRCULAR"), stax.Relu(),
                                stax.AvgPool((2, 2), (2, 2), "CIRCULAR"), stax.Flatten(), stax.Dense(1))
    with pytest.raises(CalibrationError, match="reference code path"):
        project(1000, (8, 8, 3), circular_pool, "cpu", 1, "float64", calibration)
    assert cli_main(["project", "--n", "50000", "--input-shape", "32,32,3", "--net", "cntk-gap21", "--devices", "8",
                     "--device", "cpu", "--dtype", "float32", "--calibration", str(calibration), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_devices"] == 8 and out["code_path"] == "slab" and out["device_hours"] > 0
    assert cli_main(["project", "--n", "100", "--input-shape", "784", "--net", "fc3",
                     "--calibration", str(calibration)]) == 0
    assert "core-hours" in capsys.readouterr().out
    assert cli_main(["project", "--n", "100", "--input-shape", "8,8,3", "--net", "myrtle5", "--device", "gpu",
                     "--calibration", str(calibration)]) == 2


def test_projection_says_when_cost_changed(calibration):
    cal = costmodel.load(calibration)
    assert not any("changed" in n for n in project(1000, (784,), "fc3", calibration=cal)["notes"])
    cal["cost_fingerprint"] = dict(cal["cost_fingerprint"], **{"fc3 784": 1.0})
    assert any("cost() has changed" in n for n in project(1000, (784,), "fc3", calibration=cal)["notes"])


def test_plan_takes_shapes_instead_of_a_config(capsys):
    from ntkscale.cli.main import main

    assert main(["plan", "--n", "1000", "--input-shape", "784", "--net", "fc3", "--devices", "2"]) == 0
    assert "core-hours" in capsys.readouterr().out
    assert main(["plan"]) == 2
    assert "--n, --input-shape, --net" in capsys.readouterr().err
