"""Bad input to sequences, attention and graphs: one-line errors that name the layer and the
shapes (attention on flat inputs, a 2-D Conv on sequences, patterns of the wrong shape,
functions where a spec needs data, kernels neural-tangents does not define either)."""

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import InputError, SpecError, UnsupportedOptionError

ATT = stax.GlobalSelfAttention(8, 8, 8, 2)


def _one_line(exc):
    assert "\n" not in str(exc.value)


def test_attention_on_flat_inputs():
    with pytest.raises(InputError, match=r"got shape \(3, 5\).*layer 1 of the network, "
                                         r"GlobalSelfAttention") as exc:
        stax.serial(stax.Dense(4), ATT, stax.GlobalAvgPool(), stax.Dense(1))[2](np.ones((3, 5)))
    _one_line(exc)
    with pytest.raises(InputError, match=r"\(3, 5\).*input layer 0 is GlobalSelfAttention"):
        stax.serial(ATT, stax.GlobalAvgPool())[2](np.ones((3, 5)))


def test_attention_after_flatten():
    net = stax.serial(stax.Conv(4, (3,)), stax.Flatten(), ATT, stax.Dense(1))
    with pytest.raises(SpecError, match=r"layer 2 \(GlobalSelfAttention.*already flat.*layer 1 is Flatten"):
        net[2](np.ones((3, 5, 2)))


def test_sequence_output_must_be_flat():
    with pytest.raises(SpecError, match=r"still a sequence \(5 positions\).*GlobalAvgPool"):
        stax.serial(ATT)[2](np.ones((3, 5, 2)))


def test_conv_rank_must_match_the_inputs():
    with pytest.raises(InputError, match=r"layer 0 \(Conv\(filter_shape=\(3, 3\).*2-D.*NWC sequences.*"
                                         r"x1 has shape \(3, 5, 2\)"):
        stax.serial(stax.Conv(4, (3, 3)), stax.Flatten())[2](np.ones((3, 5, 2)))
    with pytest.raises(InputError, match=r"Conv\(filter_shape=\(3,\).*1-D.*4-D NHWC"):
        stax.serial(stax.Conv(4, (3,)), stax.Flatten())[2](np.ones((3, 5, 5, 2)))
    with pytest.raises(InputError, match=r"at least 3 positions.*has 2.*sequences are 2x1"):
        stax.serial(stax.Conv(4, (3,)), stax.Flatten())[2](np.ones((3, 2, 1)))
    with pytest.raises(SpecError, match=r"strides one entry per filter axis"):
        stax.Conv(4, (3,), strides=(1, 1))


def test_kernels_neural_tangents_does_not_define():
    for mech in ("SOFTMAX", "ABS", "RELU"):
        net = stax.serial(stax.GlobalSelfAttention(8, 8, 8, 2, linear_scaling=False,
                                                   attention_mechanism=mech), stax.GlobalAvgPool())
        with pytest.raises(UnsupportedOptionError, match=f"{mech}.*linear_scaling=False.*no known"):
            net[2](np.ones((2, 4, 3)))
        with pytest.raises(UnsupportedOptionError):
            net[2].explain((2, 4, 3))
        _, params = net[0](0, (2, 4, 3))                    # the finite network still exists
        assert net[1](params, np.ones((2, 4, 3))).shape == (2, 8)


def test_spec_data_not_functions():
    with pytest.raises(SpecError, match=r"pos_emb_decay_fn=<function>.*'exponential', 'power'"):
        stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_decay_fn=lambda d: d)
    with pytest.raises(SpecError, match=r"'gauss'\) is not a known decay"):
        stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_decay_fn="gauss")
    with pytest.raises(SpecError, match=r"no parameter\(s\) 'scale'"):
        stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_decay_fn={"name": "exponential", "scale": 2})
    with pytest.raises(SpecError, match=r"to_dense=<function>"):
        stax.Aggregate(to_dense=lambda p: p)
    with pytest.raises(SpecError, match=r"choose one of 'SOFTMAX'"):
        stax.GlobalSelfAttention(8, 8, 8, 2, attention_mechanism="softmax")
    with pytest.raises(SpecError, match=r"needs the keyword 'n_heads'"):
        stax.from_spec([["GlobalSelfAttention", {"n_chan_out": 8, "n_chan_key": 8, "n_chan_val": 8}]])


def test_sum_embedding_channels_must_match():
    net = stax.serial(stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="SUM", n_chan_pos_emb=3),
                      stax.GlobalAvgPool())
    with pytest.raises(SpecError, match=r"n_chan_pos_emb=3 channels but the inputs have 2"):
        net[0](0, (2, 4, 2))


def test_concat_with_embedding_width_needs_the_input_width():
    net = stax.serial(stax.Dense(None), stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="CONCAT",
                                                                 n_chan_pos_emb=3), stax.GlobalAvgPool())
    with pytest.raises(SpecError, match=r"n_chan_pos_emb=3 needs the channel count"):
        net[2](np.ones((2, 4, 2)))


GRAPH = stax.serial(stax.Dense(4), stax.Aggregate(), stax.GlobalAvgPool(), stax.Dense(1))
X = np.random.default_rng(0).standard_normal((3, 5, 2))


def test_pattern_of_the_wrong_shape():
    with pytest.raises(InputError, match=r"Aggregate\(implementation='DENSE'\): pattern1 has shape "
                                         r"\(3, 4, 4\), expected \(3, 5, 5\)") as exc:
        GRAPH[2](X, None, pattern=(np.ones((3, 4, 4)), None))
    _one_line(exc)
    with pytest.raises(InputError, match=r"pattern2.*shape \(2, 5, 5\).*inputs have 3 rows"):
        GRAPH[2](X, X, pattern=(np.ones((3, 5, 5)), np.ones((2, 5, 5))))
    with pytest.raises(InputError, match=r"exactly one None"):
        GRAPH[2](X, X, pattern=(np.ones((3, 5, 5)), None))
    with pytest.raises(InputError, match=r"takes a pair"):
        GRAPH[2](X, None, pattern=np.ones((3, 5, 5)))
    _, params = GRAPH[0](0, X.shape)
    with pytest.raises(InputError, match=r"pattern has shape \(3, 6, 6\), expected \(3, 5, 5\)"):
        GRAPH[1](params, X, pattern=np.ones((3, 6, 6)))


def test_sparse_edges_of_the_wrong_shape():
    net = stax.serial(stax.Aggregate(implementation="SPARSE"), stax.GlobalAvgPool())
    with pytest.raises(InputError, match=r"shape \(3, 4, 3\), expected \(3, n_edges, K, 2\)"):
        net[2](X, None, pattern=(np.zeros((3, 4, 3), dtype=int), None))
    with pytest.raises(InputError, match=r"integer node indices"):
        net[2](X, None, pattern=(np.full((3, 4, 2), 0.5), None))


def test_aggregate_axis_must_name_node_axes():
    net = stax.serial(stax.Aggregate(aggregate_axis=3), stax.GlobalAvgPool())
    with pytest.raises(SpecError, match=r"aggregate_axis must name node axes"):
        net[2](np.ones((2, 3, 4, 2)), None, pattern=(np.ones((2, 2, 2)), None))


def test_layernorm_positive_axes_on_sequences():
    net = stax.serial(stax.Dense(4), stax.LayerNorm(axis=(1, 2)), stax.GlobalAvgPool())
    with pytest.raises(InputError, match=r"LayerNorm.*negative axes \(-1 channels, -2 positions\)"):
        net[2](np.ones((2, 5, 3)))
    ok = stax.serial(stax.Dense(4), stax.LayerNorm(axis=(-2, -1)), stax.GlobalAvgPool())
    assert ok[2](np.random.default_rng(0).standard_normal((2, 5, 3)), None, "nngp").shape == (2, 2)
