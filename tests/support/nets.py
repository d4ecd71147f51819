"""Activation lists the stax tests draw networks from (one definition each)."""

from ntkscale import stax

#: Every activation, as the flat tests draw them (all run on cpu_flat and the reference path).
FLAT_ACTS = [stax.Relu(), stax.LeakyRelu(0.1), stax.Abs(), stax.Erf(), stax.Gelu(), stax.Sin(),
             stax.Identity()]
#: The activations the compiled slab kernel runs on images, with non-default parameters.
SLAB_ACTS = [stax.Relu(), stax.LeakyRelu(0.2), stax.Abs(), stax.ABRelu(-0.3, 1.2), stax.Erf(),
             stax.Erf(0.7, 1.3, 0.2), stax.Identity()]
