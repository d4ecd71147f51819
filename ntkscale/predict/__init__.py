"""Predictions: from a solved kernel regression (means and posterior variances,
``blocked``) and, in neural-tangents' ``predict`` vocabulary, training dynamics
at any time and GP inference on dense kernels (``dynamics``, ``ensemble``).

Porting from neural-tangents is ``nt.predict`` -> ``ntkscale.predict``.
"""

from .blocked import cross_operator, evaluate, nngp_posterior_variance, ntk_posterior_variance, predict
from .dynamics import Gaussian, gradient_descent_mse, max_learning_rate
from .ensemble import gp_inference, gradient_descent_mse_ensemble

__all__ = ["Gaussian", "cross_operator", "evaluate", "gp_inference", "gradient_descent_mse",
           "gradient_descent_mse_ensemble", "max_learning_rate", "nngp_posterior_variance",
           "ntk_posterior_variance", "predict"]
