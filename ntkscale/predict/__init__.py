"""Predictions from a solved kernel regression: means and posterior variances."""

from .blocked import cross_operator, evaluate, nngp_posterior_variance, ntk_posterior_variance, predict

__all__ = ["cross_operator", "evaluate", "nngp_posterior_variance", "ntk_posterior_variance", "predict"]
