"""Training: settings, the loop (engine), one unit from start to metrics (trainer), losses, optimizers,
out-of-fold predictions and fitted decisions.
"""
