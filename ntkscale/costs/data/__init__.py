"""Cost-model calibrations shipped with ntkscale (``<device kind>.json``)."""
