"""Specs valid before branching (issue 12) keep their exact hash: existing stores stay valid.

The hashes were computed on commit 43abe2e, before the branching layers existed."""

from ntkscale import stax

HASHES = {
    "fc_relu": "2c591384adb87a3b096832d488160e65cd6a2b7d4d1e69962b5d12b53c568837",
    "fc_std_erf": "b2eb558b980e8c5f9c4d366f4ea9c02b421f83a64a202383dfbc9704c68757b4",
    "myrtle5": "40a1e3978042da9ed3d97eee0fccdced1ff7fbbf09d9bb44135d55b1349280a0",
    "conv_gap": "035065844482d2e3594ead8b3708059be1699d4e47e9533a9419841929efa0c5",
    "conv_flat_abrelu": "d0821b171766a1cd9687b5aa663557f44e4192dcf81d0148013be9cd4dee7bdc",
}


def _nets():
    return {
        "fc_relu": stax.serial(stax.Dense(512, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(1)),
        "fc_std_erf": stax.serial(stax.Dense(64, parameterization="standard", b_std=0.2), stax.Erf(),
                                  stax.Dense(10, parameterization="standard")),
        "myrtle5": stax.presets.myrtle(5),
        "conv_gap": stax.serial(stax.Conv(8, (3, 3), padding="SAME"), stax.Gelu(),
                                stax.GlobalAvgPool(), stax.Dense(1)),
        "conv_flat_abrelu": stax.serial(stax.Conv(4, (2, 2), strides=(2, 2), padding="VALID"),
                                        stax.ABRelu(-0.5, 1.0), stax.Flatten(), stax.Dense(3)),
    }


def test_existing_spec_hashes_unchanged():
    for name, net in _nets().items():
        assert net[2].spec_hash == HASHES[name], name
        again = stax.from_spec(net[2].spec_json)
        assert again[2].spec_hash == HASHES[name], name


def test_list_and_degree_parameters_canonicalise_whatever_their_number_types():
    """A YAML ``coef: [1, 2]`` or ``degree: 2.0`` is the same network, hash included,
    as ``Polynomial([1.0, 2.0])`` / ``Monomial(2)`` in Python."""
    from ntkscale import stax as nstax
    from ntkscale.stax import canonical_spec, spec_hash

    python = nstax.serial(nstax.Dense(2), nstax.Polynomial([1, 2]), nstax.Monomial(2))[2].spec
    yaml_like = canonical_spec([["Dense", {"out_dim": 2}], ["Polynomial", {"coef": [1.0, 2]}],
                                ["Monomial", {"degree": 2.0}]])
    assert python == yaml_like and spec_hash(python) == spec_hash(yaml_like)
    assert yaml_like[1] == ["Polynomial", {"coef": [1.0, 2.0]}] and yaml_like[2] == ["Monomial", {"degree": 2}]
