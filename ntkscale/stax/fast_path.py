"""Placeholder replaced below by the compiled CPU path."""

def supports(layers, x1):
    return False
