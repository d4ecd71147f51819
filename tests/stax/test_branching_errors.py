"""Bad input to branches, LayerNorm and Dropout: one clear error naming the layer and the shapes."""

import numpy as np
import pytest

from ntkscale import stax
from ntkscale.errors import SpecError, UnsupportedOptionError

FC = np.ones((2, 3))
IMG = np.ones((2, 6, 6, 1))


def _conv(s=None):
    return stax.Conv(4, (3, 3), strides=s, padding="SAME")


CASES = [
    ("FanInSum of images of different sizes",
     lambda: stax.serial(_conv(), stax.FanOut(2), stax.parallel(_conv((2, 2)), stax.Identity()),
                         stax.FanInSum(), stax.GlobalAvgPool(), stax.Dense(1))[2](IMG),
     SpecError, r"parallel.*different shapes \(3x3 pixels, 6x6 pixels\)"),
    ("FanInSum of different widths",
     lambda: stax.serial(stax.Dense(8), stax.FanOut(2), stax.parallel(stax.Dense(4), stax.Dense(8)),
                         stax.FanInSum())[2](FC),
     SpecError, r"FanInSum needs branches of equal shapes; got \(4 channels\), \(8 channels\)"),
    ("FanInSum in init_fn",
     lambda: stax.serial(stax.Dense(8), stax.FanOut(2), stax.parallel(stax.Dense(4), stax.Dense(8)),
                         stax.FanInSum())[0](0, (2, 3)),
     SpecError, r"FanInSum.*\(4,\), \(8,\)"),
    ("FanInConcat on the batch axis",
     lambda: stax.serial(stax.Dense(8), stax.FanOut(2), stax.parallel(stax.Dense(4), stax.Dense(8)),
                         stax.FanInConcat(axis=0))[2](FC),
     UnsupportedOptionError, r"FanInConcat\(axis=0\).*channel axis"),
    ("FanInConcat on a missing axis",
     lambda: stax.serial(stax.Dense(8), stax.FanOut(2), stax.parallel(stax.Dense(4), stax.Dense(8)),
                         stax.FanInConcat(axis=5))[2](FC),
     SpecError, r"FanInConcat\(axis=5\).*2 axes.*no axis 5"),
    ("LayerNorm on a missing axis (flat)",
     lambda: stax.serial(stax.Dense(8), stax.LayerNorm(axis=2))[2](FC),
     SpecError, r"LayerNorm\(axis=2\): flat inputs \(n, channels\) have no axis 2"),
    ("LayerNorm on a missing axis (images)",
     lambda: stax.serial(_conv(), stax.LayerNorm(axis=(1, 4)), stax.Flatten())[2](IMG),
     SpecError, r"LayerNorm\(axis=\[1, 4\]\): images \(n, 6, 6, channels\) have no axis 4"),
    ("LayerNorm without the channel axis",
     lambda: stax.serial(_conv(), stax.LayerNorm(axis=(1, 2)), stax.Flatten())[2](IMG),
     SpecError, r"must normalise the channel axis"),
    ("LayerNorm after a nonlinearity",
     lambda: stax.serial(stax.Dense(8), stax.Relu(), stax.LayerNorm())[2](FC),
     SpecError, r"LayerNorm needs mean-zero Gaussian inputs"),
    ("FanInSum of non-Gaussian branches",
     lambda: stax.serial(stax.Dense(8), stax.FanOut(2), stax.parallel(stax.Relu(), stax.Identity()),
                         stax.FanInSum())[2](FC),
     SpecError, r"branch 0 is not"),
    ("parallel without FanOut",
     lambda: stax.serial(stax.Dense(8), stax.parallel(stax.Relu(), stax.Identity()),
                         stax.FanInSum())[2](FC),
     SpecError, r"layer 1 \(parallel\).*2 branches but receives one input; put FanOut\(2\)"),
    ("open branches", lambda: stax.serial(stax.Dense(8), stax.FanOut(2))[2](FC),
     SpecError, r"ends with 2 open branches"),
    ("Dense on branches", lambda: stax.serial(stax.Dense(8), stax.FanOut(2), stax.Dense(3))[2](FC),
     SpecError, r"layer 2 \(Dense\).*receives 2 branches"),
    ("Dropout rate", lambda: stax.Dropout(1.5), SpecError, r"keep rate must be in \(0, 1\]"),
    ("Dropout mode", lambda: stax.Dropout(0.5, "eval"), SpecError, r"'train', 'test'"),
    ("parallel of a non-layer", lambda: stax.parallel(3), SpecError, r"parallel\(\) argument 0"),
    ("empty branches in a spec", lambda: stax.from_spec([["parallel", {"branches": []}]]),
     SpecError, r"non-empty list of branches"),
]


@pytest.mark.parametrize("what, call, error, match", CASES, ids=[c[0] for c in CASES])
def test_clear_error(what, call, error, match):
    with pytest.raises(error, match=match):
        call()
