"""placeholder"""
def supports(layers, plan, x1, xp):
    return False
